"""Run only the network *after* the bottleneck per optimisation step.

The layers before the bottleneck do not change during the per-sample optimisation, so they are computed
once. :class:`NetworkTail` splits the model's ``torch.fx`` graph at the bottleneck layer: the nodes that
depend on the layer's output form the tail; the values they need from before the layer (e.g. a skip
connection around the layer) are computed once and repeated for the noisy copies. Models that ``fx``
cannot trace, or whose split tail does not reproduce the model's output, fall back to a forward hook
that *replaces* the layer's output by ``z``; the whole network then runs on every copy at every step, as
in the reference code (correct for any model, but slower).
"""

from __future__ import annotations

import warnings

import torch
from torch import fx, nn

from xattr.core.hooks import capture, hooked
from xattr.core.layers import Layer, resolve
from xattr.errors import unknown

TAIL_MODES = ("auto", "fx", "hook")


class _Tracer(fx.Tracer):
    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(m, qualname)


def _descendants(nodes: list[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = list(nodes)
    while todo:
        n = todo.pop()
        for u in n.users:
            if u not in seen:
                seen.add(u)
                todo.append(u)
    return seen


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node]) -> None:
        super().__init__(gm)
        self.keep = keep
        self.kept: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n in self.keep:
            self.kept[n] = out
        return out


def _split(model: nn.Module, path: str):
    """(GraphModule of the tail, layer node, frontier nodes, input-dependent frontier, full gm)."""
    tracer = _Tracer(path)
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    hits = [n for n in graph.nodes if n.op == "call_module" and n.target == path]
    if len(hits) != 1:
        raise RuntimeError(f"layer {path} is called {len(hits)} times in the traced graph")
    layer = hits[0]
    tail_nodes = _descendants([layer])
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    from_input = _descendants(inputs) | set(inputs)
    frontier = [
        n for n in graph.nodes if n not in tail_nodes and n is not layer and any(u in tail_nodes for u in n.users)
    ]
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {layer: new.placeholder("z")}
    for i, n in enumerate(frontier):
        if n.op == "get_attr":
            env[n] = new.node_copy(n, lambda a: env[a])
        else:
            env[n] = new.placeholder(f"pre_{i}")
    for n in graph.nodes:
        if n in tail_nodes:
            env[n] = new.node_copy(n, lambda a: env[a])
    new.lint()
    tail = fx.GraphModule(gm, new)
    frontier = [n for n in frontier if n.op != "get_attr"]
    return tail, layer, frontier, from_input, gm


class NetworkTail:
    """``r`` (the bottleneck feature of ``x``) and a callable ``z -> outputs`` for the rest of the model.

    Args:
        model: the network (parameters should be frozen by the caller during optimisation).
        layer: the bottleneck layer (a resolved :class:`~xattr.core.layers.Layer`, or its name).
        x: ``(B, ...)`` input batch; ``z`` passed to the tail has ``B * copies`` rows, image-major.
        mode: ``auto`` (fx, falling back to the hook), ``fx`` or ``hook``.
    """

    def __init__(self, model: nn.Module, layer: Layer | str, x: torch.Tensor, mode: str = "auto") -> None:
        if mode not in TAIL_MODES:
            raise unknown("tail mode", mode, TAIL_MODES)
        self.model = model
        layer = layer if isinstance(layer, Layer) else resolve(model, layer)
        self.path, self.module = layer.path, layer.module
        self.x = x
        self.b = x.shape[0]
        self.mode = "hook"
        self._cache: dict[int, list] = {}
        if mode in ("auto", "fx"):
            try:
                self.mode = "fx"
                self._init_fx()
            except Exception as err:  # noqa: BLE001 - any tracing failure means: use the hook
                self.mode, self._cache = "hook", {}
                if mode == "fx":
                    raise
                warnings.warn(f"IBA: fx split at {self.path} failed ({err}); running the head per step", stacklevel=2)
        if self.mode == "hook":
            with torch.no_grad():
                self.r = capture(model, self.module, x).detach()

    def _init_fx(self) -> None:
        tail, layer, frontier, from_input, gm = _split(self.model, self.path)
        rec = _Recorder(gm, set(frontier) | {layer})
        with torch.no_grad():
            full = rec.run(self.x)
            self.r = rec.kept[layer].detach()
            self.tail = tail
            self.pre = [rec.kept[n] for n in frontier]
            self.batched = [n in from_input and torch.is_tensor(v) and v.shape[:1] == (self.b,) for n, v in
                            zip(frontier, self.pre)]
            # the batch size read from the input (``x.size(0)`` before a ``view``) scales with the copies
            self.batch_ints = [n in from_input and type(v) is int and v == self.b for n, v in zip(frontier, self.pre)]
            check = self(self.r)
            check2 = self(self.r.repeat_interleave(2, 0))  # with copies: rows are image-major
        ok = torch.is_tensor(full) and torch.allclose(check.float(), full.float(), rtol=1e-3, atol=1e-4)
        ok = ok and check2.shape[0] == 2 * self.b and torch.allclose(
            check2.float(), full.float().repeat_interleave(2, 0), rtol=1e-3, atol=1e-4)
        if not ok:
            raise RuntimeError("the split tail does not reproduce the model's output")

    def _pre(self, factor: int) -> list:
        if factor not in self._cache:
            self._cache = {factor: [v.repeat_interleave(factor, 0) if bat and factor > 1 else v * factor if bint else v
                                    for v, bat, bint in zip(self.pre, self.batched, self.batch_ints)]}
        return self._cache[factor]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        factor = z.shape[0] // self.b
        if self.mode == "fx":
            return self.tail(z, *self._pre(factor))
        if factor not in self._cache:
            self._cache = {factor: self.x.repeat_interleave(factor, 0) if factor > 1 else self.x}
        with hooked(self.module, lambda _out: z):
            return self.model(self._cache[factor])
