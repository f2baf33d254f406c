"""Text attribution: the image methods' text forms, on a text model's embedding layer (one score per token).

A run is a text run when the model's config names an embedding layer (``model.layers.embedding``); the
method config then stays the image one (``method=integrated_gradients``, the same name as for images) and
:func:`text_form` turns its partial into the text class: the keys the text class shares with the image one
(``n_steps``, ``chunk``, ``seed``, ``layer``, ...) pass, image-only keys (``reduce``, ``baseline``,
``segmentation``, ``sigma``, ...) are dropped, and the text-only keys keep their defaults (override with
``+method.token_reduce=l2``, ``+method.token_baseline=unk``, ...). A method without a text form fails
with one line naming it and the methods that have one.

>>> factory = text_form(build(cfg.method), embedding="embedding")
>>> scores = factory(model=net).attribute(tokens, target)     # (B, L), 0 on padding
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from torch import nn

from xattr.errors import XattrConfigError
from xattr.methods.base import Attribution
from xattr.methods.input_iba.text import InputIBAText
from xattr.methods.text.base import TOKEN_BASELINES, TOKEN_REDUCTIONS, TokenAttribution, reduce_tokens
from xattr.methods.text.gradients import (
    TextDeepLift,
    TextGradient,
    TextInputXGradient,
    TextIntegratedGradients,
)
from xattr.methods.text.iba import TextIBA
from xattr.methods.text.lime import TextLIME
from xattr.methods.text.random import TextRandom

#: image method name -> its text form (the names of ``conf/method``)
TEXT_FORMS: dict[str, type[Attribution]] = {
    "gradient": TextGradient,
    "input_x_gradient": TextInputXGradient,
    "integrated_gradients": TextIntegratedGradients,
    "deepshap": TextDeepLift,
    "lime": TextLIME,
    "random": TextRandom,
    "iba": TextIBA,
    "input_iba": InputIBAText,
    "input_iba_text": InputIBAText,
}
#: image config keys that keep their meaning for the text form (the rest of the image config is dropped)
_INPUT_IBA_KEYS = ("layer", "feat_beta", "feat_steps", "feat_lr", "feat_copies", "epochs", "n_targets", "n_groups",
                   "gan_batch", "critic", "lr_disc", "lr_mean", "lr_std", "clip", "target_mask", "copies",
                   "init_alpha", "seed", "chunk", "n_samples", "statistics", "tail", "model_name", "weights", "dataset")
TEXT_CLASSES = (TokenAttribution, TextIBA, InputIBAText)


PASS_THROUGH = ("saved",)  # methods that attribute nothing themselves (maps of an earlier run)


def check_text_method(name: str) -> None:
    """One clear error when the method ``name`` (a ``conf/method`` option) has no text form."""
    if name and name not in TEXT_FORMS and name not in PASS_THROUGH:
        raise XattrConfigError(f"method {name!r} has no text form; valid choices: {', '.join(sorted(TEXT_FORMS))}")


def _accepted(cls: type) -> set[str]:
    return {p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self", "model"}


def text_form(factory: Callable[..., Attribution], embedding: str = "embedding", pad_index: int | None = None,
              unk_index: int | None = None) -> Callable[[nn.Module], Attribution]:
    """The text form of a method partial (``functools.partial(cls, **hyper_parameters)``; see module doc).

    A text class (``input_iba_text``) is kept with all its keys; an image class is looked up by its
    ``name`` in :data:`TEXT_FORMS`. ``embedding`` / ``pad_index`` / ``unk_index`` come from the model config."""
    cls = getattr(factory, "func", factory)
    kw = dict(getattr(factory, "keywords", {}) or {})
    name = getattr(cls, "name", getattr(cls, "__name__", str(cls)))
    if name in PASS_THROUGH:
        return factory
    if isinstance(cls, type) and issubclass(cls, TEXT_CLASSES):
        text_cls, keep = cls, None
    elif name in TEXT_FORMS:
        text_cls = TEXT_FORMS[name]
        keep = _INPUT_IBA_KEYS if text_cls is InputIBAText else getattr(text_cls, "image_keys", None)
        keep = set(keep) if keep is not None else _accepted(text_cls)
        kw = {k: v for k, v in kw.items() if k in keep}
    else:
        check_text_method(name or "?")
    accepted = _accepted(text_cls)
    for key, value in (("embedding", embedding), ("pad_index", pad_index), ("unk_index", unk_index)):
        if key in accepted and value is not None:
            kw.setdefault(key, value)
    return functools.partial(text_cls, **kw)


__all__ = [
    "TEXT_FORMS", "TOKEN_BASELINES", "check_text_method", "TOKEN_REDUCTIONS", "TextDeepLift", "TextGradient", "TextIBA",
    "TextInputXGradient", "TextIntegratedGradients", "TextLIME", "TextRandom", "TokenAttribution",
    "reduce_tokens", "text_form",
]
