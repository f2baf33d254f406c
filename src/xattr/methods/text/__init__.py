"""Text attribution: the image methods' text forms, on a text model's embedding layer (one score per token).

A run is a text run when the model's config names an embedding layer (``model.layers.embedding``); the
method config then stays the image one (``method=integrated_gradients``, the same name as for images) and
:func:`text_form` turns its partial into the text class: the keys the text class shares with the image one
(``n_steps``, ``chunk``, ``seed``, ``layer``, ...; :func:`shared_keys`) pass, image-only keys (``reduce``, ``baseline``,
``segmentation``, ``sigma``, ...) are dropped, and the text-only keys keep their defaults (override with
``+method.token_reduce=l2``, ``+method.token_baseline=unk``, ...). A method without a text form fails
with one line naming it and the methods that have one. Each text class registers itself in
:data:`~xattr.methods.base.TEXT_FORMS` under the image names it declares (``text_form_of``).

>>> factory = text_form(build(cfg.method), embedding="embedding")
>>> scores = factory(model=net).attribute(tokens, target)     # (B, L), 0 on padding
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from torch import nn

import xattr.methods.input_iba.text  # noqa: F401 - InputIBAText registers itself (one-way: it needs nothing here)
from xattr.errors import XattrConfigError
from xattr.methods.base import TEXT_FORMS, Attribution
from xattr.methods.text.attention import TextAttentionRollout, TextChefer
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

PASS_THROUGH = ("saved",)  # methods that attribute nothing themselves (maps of an earlier run)


def check_text_method(name: str) -> None:
    """One clear error when the method ``name`` (a ``conf/method`` option) has no text form."""
    if name and name not in TEXT_FORMS and name not in PASS_THROUGH:
        raise XattrConfigError(f"method {name!r} has no text form; valid choices: {', '.join(sorted(TEXT_FORMS))}")


def _params(cls: type) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in ("self", "model")}


def _takes_any(cls: object) -> bool:
    """The class's ``__init__`` passes ``**kwargs`` on (its keys are checked where they land)."""
    if not isinstance(cls, type):
        return True
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())


def _accepted(cls: type) -> set[str]:
    return set(_params(cls))


def shared_keys(text_cls: type) -> set[str]:
    """The image config keys that keep their meaning for ``text_cls``: its ``image_keys`` when it lists them;
    for a text class derived from its image class (``InputIBAText(InputIBA)``), the image class's parameters
    less the keyword-only ones the text class declares itself (its text defaults: ``beta``, ``steps``, ...);
    else every keyword its ``__init__`` accepts."""
    listed = getattr(text_cls, "image_keys", None)
    if listed is not None:
        return set(listed)
    image_cls = next((c for c in text_cls.__mro__[1:] if getattr(c, "name", None) in text_cls.text_form_of
                      and not c.__dict__.get("text_form_of")), None)
    if image_cls is None:
        return _accepted(text_cls)
    own = {k for k, p in _params(text_cls).items() if p.kind == p.KEYWORD_ONLY}
    return _accepted(image_cls) - own


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
    if isinstance(cls, type) and getattr(cls, "text_form_of", ()):
        text_cls = cls
    elif name in TEXT_FORMS:
        text_cls = TEXT_FORMS[name]
        keep = shared_keys(text_cls)
        known = _accepted(text_cls) | (_accepted(cls) if isinstance(cls, type) else set(kw))
        bad = [] if _takes_any(text_cls) or _takes_any(cls) else sorted(set(kw) - known)
        if bad:  # neither the image class's key (config defaults) nor the text form's: a typo
            raise XattrConfigError(f"unknown key 'method.{bad[0]}'; valid choices: {', '.join(sorted(known))}")
        kw = {k: v for k, v in kw.items() if k in keep}
    else:
        check_text_method(name or "?")
    accepted = _accepted(text_cls)
    for key, value in (("embedding", embedding), ("pad_index", pad_index), ("unk_index", unk_index)):
        if key in accepted and value is not None:
            kw.setdefault(key, value)
    return functools.partial(text_cls, **kw)


__all__ = [
    "TEXT_FORMS", "TextAttentionRollout", "TextChefer", "TOKEN_BASELINES", "check_text_method", "TOKEN_REDUCTIONS", "TextDeepLift", "TextGradient", "TextIBA",
    "TextInputXGradient", "TextIntegratedGradients", "TextLIME", "TextRandom", "TokenAttribution",
    "reduce_tokens", "shared_keys", "text_form",
]
