"""Token-grid layouts of vision transformers: where a layer's token output lies on the image's patch grid.

A CNN layer gives ``(B, C, h, w)``; a vision transformer's layers give tokens. Every method that needs a
feature map (IBA's heatmap, Grad-CAM's weights and map) or the attention between tokens (rollout, Chefer)
asks this module, once per architecture family, instead of knowing the families itself:

- ``tokens`` layout ``(B, N, C)`` with ``N = P + h w``: ``P`` special tokens first (``prefix``: the class
  token of ViT, class + distillation tokens of DeiT, register tokens), then the patches in row-major order
  (torchvision ``VisionTransformer`` ``encoder.*``; timm ``VisionTransformer`` ``blocks.*`` / ``norm``).
- ``channels_last`` layout ``(B, h, w, C)``: Swin's stages (torchvision ``SwinTransformer`` ``features.*``,
  ``norm``; timm ``SwinTransformer`` ``layers.*``, ``norm``). No special tokens.

:meth:`TokenLayout.to_grid` is pytorch-grad-cam's ``reshape_transform`` convention (its ViT tutorial:
``t[:, P:, :].reshape(B, h, w, C)`` then channels first), so the same function serves Grad-CAM and IBA's
heatmap. The grid size ``(h, w)`` of a ``tokens`` layout follows from ``N - P`` and the input's aspect
ratio. :func:`token_layout` returns ``None`` for a layer whose output is already a ``(B, C, h, w)`` map
(a ViT's patch-embedding convolution) or for a model of no known family (a CNN).

:func:`attention_modules` names, per family, the modules whose attention probabilities
:func:`capture_attention` records (a torchvision ``nn.MultiheadAttention`` asked for per-head weights; timm's
``attn_drop`` on the explicit, non-fused path); ``None`` for Swin, whose windowed, shifted attention is no
token-to-token matrix over the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from xattr.errors import XattrConfigError

LAYOUTS = ("tokens", "channels_last")


@dataclass(frozen=True)
class TokenLayout:
    """How one layer's output lies on the patch grid (see the module docstring).

    Args:
        kind: ``tokens`` (``(B, N, C)``) or ``channels_last`` (``(B, h, w, C)``).
        prefix: special tokens before the patches (``tokens`` only).
        prefix_names: their names (``("cls",)``, ``("cls", "dist")``), for messages and auxiliary results.
        family: the architecture family that declared it (messages).
    """

    kind: str
    prefix: int = 0
    prefix_names: tuple[str, ...] = ()
    family: str = ""

    def grid_size(self, t: torch.Tensor, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
        """``(h, w)`` of the patch grid of ``t`` (for ``tokens``: from ``N - prefix`` and the input's aspect
        ratio ``image_hw``; a square grid when it is not given)."""
        if self.kind == "channels_last":
            return int(t.shape[1]), int(t.shape[2])
        n = int(t.shape[1]) - self.prefix
        ratio = 1.0 if image_hw is None else image_hw[0] / image_hw[1]
        h = int(round(math.sqrt(n * ratio)))
        if h < 1 or n % h:
            raise XattrConfigError(f"{n} patch tokens do not fill a grid of the input's aspect ratio "
                                   f"{image_hw}: the layer's output is not a {self.family} token grid")
        return h, n // h

    def to_grid(self, t: torch.Tensor, image_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """The patch tokens as a map ``(B, C, h, w)`` (special tokens dropped; row-major patches)."""
        if t.dim() != (4 if self.kind == "channels_last" else 3):
            raise XattrConfigError(f"a {self.family} {self.kind} layer gives {tuple(t.shape)}; expected "
                                   f"{'(B, h, w, C)' if self.kind == 'channels_last' else '(B, N, C)'}")
        if self.kind == "channels_last":
            return t.permute(0, 3, 1, 2)
        h, w = self.grid_size(t, image_hw)
        return t[:, self.prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

    def special(self, t: torch.Tensor) -> torch.Tensor:
        """The special tokens ``(B, prefix, C)`` (empty for Swin)."""
        if self.kind == "channels_last":
            return t.new_zeros(t.shape[0], 0, t.shape[-1])
        return t[:, : self.prefix]

    def grid_to_tokens(self, grid: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_grid` (with :meth:`special`): ``(B, C, h, w)`` back to the layer's layout."""
        if self.kind == "channels_last":
            return grid.permute(0, 2, 3, 1)
        return torch.cat([special, grid.flatten(2).transpose(1, 2)], dim=1)


# ------------------------------------------------------------------------ families (declared once each)


def _module_of(net: nn.Module, prefix: str) -> bool:
    return any(c.__module__.startswith(prefix) for c in type(net).__mro__)


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r + ".") for r in roots)


def _torchvision_vit(net: nn.Module, path: str) -> TokenLayout | None:
    # encoder.* gives (B, 1 + h w, C); conv_proj is a (B, C, h, w) map; heads read the class token only
    return TokenLayout("tokens", 1, ("cls",), "torchvision ViT") if _under(path, ("encoder",)) else None


def _torchvision_swin(net: nn.Module, path: str) -> TokenLayout | None:
    # features.0 = patch embedding + Permute + LayerNorm, then stages and patch merging, all (B, h, w, C)
    if _under(path, ("features", "norm")):
        return TokenLayout("channels_last", family="torchvision Swin")
    return None


def _timm_vit(net: nn.Module, path: str) -> TokenLayout | None:
    p = int(getattr(net, "num_prefix_tokens", 1))
    regs = int(getattr(net, "num_reg_tokens", 0) or 0)
    names = (("cls",) if getattr(net, "cls_token", None) is not None else ()) + (
        ("dist",) if getattr(net, "dist_token", None) is not None else ()) + tuple(f"reg{i}" for i in range(regs))
    if _under(path, ("blocks", "norm", "pos_drop", "patch_drop", "norm_pre")):
        return TokenLayout("tokens", p, names[:p], "timm ViT")
    if _under(path, ("patch_embed",)) and getattr(getattr(net, "patch_embed", None), "flatten", False):
        return TokenLayout("tokens", 0, (), "timm ViT")
    return None


def _timm_swin(net: nn.Module, path: str) -> TokenLayout | None:
    if _under(path, ("layers", "norm", "patch_embed")):
        return TokenLayout("channels_last", family="timm Swin")
    return None


def _family(net: nn.Module) -> str | None:
    import torchvision

    if isinstance(net, torchvision.models.VisionTransformer):
        return "torchvision_vit"
    if isinstance(net, torchvision.models.SwinTransformer):
        return "torchvision_swin"
    if _module_of(net, "timm.models.vision_transformer") or _module_of(net, "timm.models.deit"):
        return "timm_vit"
    if _module_of(net, "timm.models.swin_transformer"):
        return "timm_swin"
    return None


LAYOUT_RULES = {"torchvision_vit": _torchvision_vit, "torchvision_swin": _torchvision_swin,
                "timm_vit": _timm_vit, "timm_swin": _timm_swin}


def transformer_family(net: nn.Module) -> str | None:
    """``torchvision_vit`` | ``torchvision_swin`` | ``timm_vit`` | ``timm_swin``, or ``None`` (not a known
    vision transformer). A model may declare its own with an ``xattr_family`` attribute."""
    return getattr(net, "xattr_family", None) or _family(net)


def token_layout(net: nn.Module, path: str) -> TokenLayout | None:
    """The token-grid layout of the module at ``path`` in ``net`` (module path, not a paper name), or
    ``None`` when its output is an ordinary ``(B, C, h, w)`` map or ``net`` is no known transformer."""
    family = transformer_family(net)
    return None if family is None else LAYOUT_RULES[family](net, path)


def no_transformer_form(model: nn.Module, name: str, why: str) -> None:
    """One line for a method with no vision-transformer form, when ``model`` is a known ViT / Swin family."""
    family = transformer_family(model)
    if family is not None:
        raise XattrConfigError(f"method {name} has no vision-transformer form ({family}): {why}; use grad_cam, "
                               "chefer, attention_rollout, iba or the gradient methods (docs/transformers.md)")


# ------------------------------------------------------------------------ attention probabilities


def attention_modules(net: nn.Module) -> list[str] | None:
    """Module paths, in forward order, whose attention probabilities :func:`capture_attention` records:
    every block's global self-attention; ``None`` for a family without one (Swin, a CNN)."""
    family = transformer_family(net)
    if family == "torchvision_vit":
        return [f"{p}" for p, m in net.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if family == "timm_vit":
        return [f"{p}.attn_drop" for p, m in net.named_modules()
                if hasattr(m, "attn_drop") and hasattr(m, "qkv") and hasattr(m, "num_heads")]
    return None


def _ask_weights(_m, args, kwargs):
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _through_weights(m: nn.MultiheadAttention, args, kwargs, out, atts: list[torch.Tensor]):
    """The attention output recomputed from the returned weights ``a`` (``out_proj(heads(a v))``, MHA's last
    step; exact in eval mode, where its dropout is off), so that ``a`` is in the graph: torch returns a view
    made after it used the weights, whose gradient would otherwise not exist."""
    value = args[2] if len(args) > 2 else kwargs["value"]
    if not m.batch_first or not m._qkv_same_embed_dim or m.training:
        raise XattrConfigError("attention maps are read from batch-first, eval-mode nn.MultiheadAttention "
                               "with one in_proj weight (torchvision's ViT)")
    e, h = m.embed_dim, m.num_heads
    bias = None if m.in_proj_bias is None else m.in_proj_bias[2 * e:]
    v = nn.functional.linear(value, m.in_proj_weight[2 * e:], bias)  # (B, N, E)
    b, n = v.shape[:2]
    v = v.view(b, n, h, e // h).transpose(1, 2)  # (B, heads, N, d)
    a = out[1]
    atts.append(a)
    return m.out_proj((a @ v).transpose(1, 2).reshape(b, n, e)), a


@contextmanager
def capture_attention(net: nn.Module, atts: list[torch.Tensor]) -> Iterator[None]:
    """Inside the block, every forward of ``net`` appends each layer's attention probabilities
    ``(B, heads, N, N)`` to ``atts`` (in the graph: gradients reach them). torchvision: the
    ``nn.MultiheadAttention`` call is asked for ``need_weights=True, average_attn_weights=False`` and its
    output recomputed from the returned weights (:func:`_through_weights`); timm: the
    attention's ``fused_attn`` is switched off inside the block and ``attn_drop``'s output recorded."""
    paths = attention_modules(net)
    if not paths:
        raise XattrConfigError(f"{type(net).__name__} has no global self-attention to read "
                               "(known: torchvision and timm ViT / DeiT)")
    handles, fused = [], []
    try:
        for p in paths:
            m = net.get_submodule(p)
            if isinstance(m, nn.MultiheadAttention):
                handles.append(m.register_forward_pre_hook(_ask_weights, with_kwargs=True))
                handles.append(m.register_forward_hook(
                    lambda mod, args, kwargs, out: _through_weights(mod, args, kwargs, out, atts), with_kwargs=True))
            else:
                parent = net.get_submodule(p.rsplit(".", 1)[0])
                if hasattr(parent, "fused_attn"):
                    fused.append((parent, parent.fused_attn))
                    parent.fused_attn = False
                handles.append(m.register_forward_hook(lambda _m, _i, out: atts.append(out)))
        yield
    finally:
        for h in handles:
            h.remove()
        for parent, flag in fused:
            parent.fused_attn = flag


__all__ = ["LAYOUTS", "TokenLayout", "attention_modules", "capture_attention", "no_transformer_form",
           "token_layout", "transformer_family"]
