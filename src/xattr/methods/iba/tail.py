"""Run only the network *after* the bottleneck per optimisation step.

The layers before the bottleneck do not change during the per-sample optimisation, so they are computed
once. :class:`NetworkTail` splits the model's ``torch.fx`` graph at the bottleneck layer: the nodes that
depend on the layer's output form the tail; the values they need from before the layer (e.g. a skip
connection around the layer) are computed once and repeated for the noisy copies. Models that ``fx``
cannot trace, or whose split tail does not reproduce the model's output, fall back to a forward hook
that *replaces* the layer's output by ``z``; the whole network then runs on every copy at every step, as
in the reference code (correct for any model, but slower).

Speed (``optimise=True``, the default; issue 18, profiled on the 224 px MobileNet-V2 run where the tail's
forward and backward are ~95% of the time): the fx tail gets its own module table, in which every
eval-mode BatchNorm that directly follows a convolution is folded into a copy of that convolution
(``torch.nn.utils.fusion.fuse_conv_bn_eval``: one conv instead of conv + batch norm, forward and backward),
and 4-d tails run in channels-last memory format on copies of the conv weights (oneDNN / cuDNN kernels
for NHWC). The model itself is never modified. Both are exact up to float rounding (~1e-5 relative);
the split's self-check against the model's output still runs on the optimised tail.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


class _Kept(Exception):
    """Raised by a :class:`_Recorder` with ``stop=True`` once every kept value is recorded."""


class _Recorder(fx.Interpreter):
    """Runs the traced model and keeps the values of the nodes ``keep``; ``stop``: stops (raising
    :class:`_Kept`) as soon as all of them are kept, so the layers after them do not run."""

    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node], stop: bool = False) -> None:
        super().__init__(gm)
        self.keep, self.stop = keep, stop
        self.kept: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n in self.keep:
            self.kept[n] = out
            if self.stop and len(self.kept) == len(self.keep):
                raise _Kept
        return out


def _own_modules(graph: fx.Graph, gm: fx.GraphModule, fold: bool, channels_last: bool) -> dict[str, object]:
    """The modules / attributes the tail's ``graph`` uses, by qualified name, as a new table (the model's
    containers are not shared); ``fold``: conv + eval BatchNorm pairs folded (the graph is rewritten);
    ``channels_last``: conv weights copied to channels-last."""
    table: dict[str, object] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            table[n.target] = gm.get_submodule(n.target)
        elif n.op == "get_attr":
            table[n.target] = _get_attr(gm, n.target)
    if not fold and not channels_last:
        return table
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    for n in list(graph.nodes) if fold else []:
        if n.op != "call_module" or not isinstance(table[n.target], nn.BatchNorm2d):
            continue
        bn, src = table[n.target], n.args[0] if n.args else None
        if (bn.training or not bn.track_running_stats or not isinstance(src, fx.Node) or src.op != "call_module"
                or type(table.get(src.target)) is not nn.Conv2d or len(src.users) != 1 or calls[src.target] != 1
                or calls[n.target] != 1 or len(n.args) != 1 or n.kwargs):
            continue
        conv = table[src.target]
        if conv.training:
            continue
        table[src.target] = fuse_conv_bn_eval(conv, bn)
        n.replace_all_uses_with(src)
        graph.erase_node(n)
        del table[n.target]
    for name, m in list(table.items()) if channels_last else []:
        if isinstance(m, nn.Conv2d):  # a shallow copy with its own parameter table: the model keeps its weights
            m = copy.copy(m)
            m._parameters = dict(m._parameters)
            for pname, p in list(m._parameters.items()):
                if p is not None:
                    fmt = torch.channels_last if p.dim() == 4 else torch.contiguous_format
                    m._parameters[pname] = nn.Parameter(p.detach().contiguous(memory_format=fmt), requires_grad=False)
            table[name] = m
    return table


def _get_attr(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _split(model: nn.Module, path: str, fold: bool = False, channels_last: bool = False):
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
    table = _own_modules(new, gm, fold, channels_last)
    new.lint()
    tail = fx.GraphModule(table, new)
    frontier = [n for n in frontier if n.op != "get_attr"]
    return tail, layer, frontier, from_input, gm


class NetworkTail:
    """``r`` (the bottleneck feature of ``x``) and a callable ``z -> outputs`` for the rest of the model.

    Args:
        model: the network (parameters should be frozen by the caller during optimisation).
        layer: the bottleneck layer (a resolved :class:`~xattr.core.layers.Layer`, or its name).
        x: ``(B, ...)`` input batch; ``z`` passed to the tail has ``B * copies`` rows, image-major.
        mode: ``auto`` (fx, falling back to the hook; the hook at once for a model whose ``fx_traceable`` is
            False), ``fx`` or ``hook``.
        optimise: fold conv + BatchNorm and run 4-d fx tails channels-last (module docstring).
    """

    def __init__(self, model: nn.Module, layer: Layer | str, x: torch.Tensor, mode: str = "auto",
                 optimise: bool = True) -> None:
        if mode not in TAIL_MODES:
            raise unknown("tail mode", mode, TAIL_MODES)
        self.model = model
        layer = layer if isinstance(layer, Layer) else resolve(model, layer)
        self.path, self.module = layer.path, layer.module
        self.x = x
        self.b = x.shape[0]
        self.optimise = bool(optimise)
        self.channels_last = False
        self.mode = "hook"
        self._cache: dict[int, list] = {}
        if mode == "auto" and getattr(model, "fx_traceable", True) is False:  # the model says fx cannot trace it
            mode = "hook"
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
        # optimised first; a tail that fails with channels-last (e.g. a ``.view`` of the feature) or with
        # folding is rebuilt without it, so the optimisation never costs the fx split itself
        levels = [(True, True), (True, False), (False, False)] if self.optimise else [(False, False)]
        for i, (fold, cl) in enumerate(levels):
            try:
                self._init_fx_level(fold, cl)
                return
            except Exception:  # noqa: BLE001 - try the next, less optimised tail; the last one raises
                self._cache = {}
                if i == len(levels) - 1:
                    raise

    def _init_fx_level(self, fold: bool, cl: bool) -> None:
        tail, layer, frontier, from_input, gm = _split(self.model, self.path, fold, cl)
        rec = _Recorder(gm, set(frontier) | {layer})
        with torch.no_grad():
            full = rec.run(self.x)
            self.tail = tail
            self.channels_last = cl and rec.kept[layer].dim() == 4
            self._graph = (gm, layer, frontier, from_input)
            self._keep(rec)
            check = self(self.r)
            check2 = self(self.r.repeat_interleave(2, 0))  # with copies: rows are image-major
        ok = torch.is_tensor(full) and torch.allclose(check.float(), full.float(), rtol=1e-3, atol=1e-4)
        ok = ok and check2.shape[0] == 2 * self.b and torch.allclose(
            check2.float(), full.float().repeat_interleave(2, 0), rtol=1e-3, atol=1e-4)
        if not ok:
            raise RuntimeError("the split tail does not reproduce the model's output")

    def _keep(self, rec: _Recorder) -> None:
        """``r`` and the values the tail needs from before the layer, from a recording run on ``self.x``."""
        _, layer, frontier, from_input = self._graph
        self.r = rec.kept[layer].detach()
        self.pre = [self._fmt(rec.kept[n]) for n in frontier]
        self.batched = [n in from_input and torch.is_tensor(v) and v.shape[:1] == (self.b,) for n, v in
                        zip(frontier, self.pre)]
        # the batch size read from the input (``x.size(0)`` before a ``view``) scales with the copies
        self.batch_ints = [n in from_input and type(v) is int and v == self.b for n, v in zip(frontier, self.pre)]

    def for_input(self, x: torch.Tensor, r: torch.Tensor | None = None) -> NetworkTail:
        """The same split for another input batch ``x`` (any batch size): ``r`` and the values the tail needs
        from before the layer, recomputed by a forward that stops once it has them. The tracing, folding and
        self-check ran once, at construction, and are not repeated: for loops over many batches through one
        tail (the read-out's training), where they cost more than the step itself. The model's weights must
        not change in between (the tail holds folded copies of them). ``r``: the layer's output on ``x`` when
        the caller has it (the read-out's own forward records it); then a tail that needs nothing else from
        before the layer (a sequential network) runs no forward at all."""
        if x is self.x:
            return self
        self.x, self.b, self._cache = x, x.shape[0], {}
        with torch.no_grad():
            if self.mode == "hook":
                self.r = r.detach() if r is not None else capture(self.model, self.module, x).detach()
                return self
            gm, layer, frontier, _ = self._graph
            if r is not None and not frontier:
                self.r, self.pre, self.batched, self.batch_ints = r.detach(), [], [], []
                return self
            rec = _Recorder(gm, set(frontier) | {layer}, stop=True)
            try:
                rec.run(x)
            except _Kept:
                pass
            self._keep(rec)
        return self

    def _fmt(self, v):
        if self.channels_last and torch.is_tensor(v) and v.dim() == 4:
            return v.contiguous(memory_format=torch.channels_last)
        return v

    def _pre(self, factor: int) -> list:
        if factor not in self._cache:
            self._cache = {factor: [self._fmt(v.repeat_interleave(factor, 0)) if bat and factor > 1 else v * factor if bint else v
                                    for v, bat, bint in zip(self.pre, self.batched, self.batch_ints)]}
        return self._cache[factor]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        factor = z.shape[0] // self.b
        if self.mode == "fx":
            return self.tail(self._fmt(z), *self._pre(factor))
        if factor not in self._cache:
            self._cache = {factor: self.x.repeat_interleave(factor, 0) if factor > 1 else self.x}
        with hooked(self.module, lambda _out: z):
            return self.model(self._cache[factor])
