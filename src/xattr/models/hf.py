"""HuggingFace ``transformers`` sequence classifiers as xattr text models (``model=hf model.path=<folder>``).

A folder written by ``save_pretrained`` (``config.json``, the weights, the tokenizer's files) is loaded with
``local_files_only=True``: nothing is downloaded, and a missing folder is one line saying what to put there.
The optional extra ``.[hf]`` installs ``transformers``; it is imported (:mod:`xattr.core.hf`) only when such a model is built.

:class:`HFClassifier` makes the classifier a text model as the rest of xattr knows them
(:mod:`xattr.methods.text`): ``forward(x)`` takes ``(B, L)`` long token ids, right-padded with the tokenizer's
``[PAD]``, and builds the ``attention_mask`` from them (``x != pad_index``), so every method and metric that
perturbs, pads or removes tokens respects the mask without knowing about it; padded positions are masked
keys, so they neither get attention nor change the output of the real tokens. Beside it:

- ``embed(x)`` / ``forward_embedded(emb, mask)``: the word-embedding output and a forward from it (the model's
  own ``inputs_embeds``: position and token-type embeddings are still added), as
  :class:`xattr.models.text.LSTMClassifier` has them (text InputIBA, the gradient methods);
- ``attentions(x)``: the logits and every layer's attention probabilities ``(B, heads, L, L)`` (the model is
  loaded with the ``eager`` attention implementation, which returns them), for attention rollout and Chefer;
- ``pad_index``, ``unk_index``, ``special_ids`` (``[CLS]``, ``[SEP]``, ...) from the tokenizer;
- ``xattr_layers``: ``embedding`` (``get_input_embeddings()``) and ``layer_1`` .. ``layer_n`` (the encoder's
  blocks, whose outputs are the ``(B, L, H)`` token states: where a bottleneck sits).

>>> zoo = xattr.load_model("assets/text/imdb_transformer")            # or model=imdb_transformer
>>> logits = zoo.net(ids)                                               # ids (B, L), [PAD] on the right
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xattr.core.hf import TokenizerVocab, check_folder, load_tokenizer, transformers_module
from xattr.errors import XattrConfigError


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The module path and list of the encoder's blocks: the first ``ModuleList`` with one entry per hidden
    layer (``num_hidden_layers``, DistilBERT's ``n_layers``)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and n and len(mod) == n:
            return name, mod
    return None


class HFClassifier(nn.Module):
    """A ``transformers`` sequence classifier on ``(B, L)`` token ids (see the module docstring).

    Args:
        model: an ``AutoModelForSequenceClassification`` model.
        tokenizer: its tokenizer (``pad_token_id``, ``unk_token_id``, ``all_special_ids``).
    """

    #: torch.fx cannot trace a transformers model (data-dependent masks): IBA runs its tail by a forward hook
    fx_traceable = False

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        vocab = TokenizerVocab(tokenizer)  # the ids the datasets use too
        self.pad_index, self.unk_index, self.special_ids = vocab.pad_index, vocab.unk_index, vocab.special_ids
        self.num_classes = int(model.config.num_labels)
        emb = model.get_input_embeddings()
        paths = {id(m): n for n, m in model.named_modules()}
        self.xattr_layers = {"embedding": f"model.{paths[id(emb)]}"}
        found = encoder_layers(model)
        if found is not None:
            base, blocks = found
            self.xattr_layers.update({f"layer_{k}": f"model.{base}.{k - 1}" for k in range(1, len(blocks) + 1)})

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The ``attention_mask`` ``(B, L)`` of token ids: 1 on every token that is not ``[PAD]``."""
        return (x != self.pad_index).long()

    def check_length(self, x: torch.Tensor) -> None:
        """One line when a text is longer than the model's position embeddings."""
        n = getattr(self.model.config, "max_position_embeddings", None)
        if n is not None and x.shape[1] > int(n):
            raise XattrConfigError(f"texts of {x.shape[1]} tokens are longer than the model's {n} positions; set "
                                   f"dataset.max_len <= {n} (or the tokenizer's model_max_length)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_length(x)
        return self.model(input_ids=x, attention_mask=self.mask(x)).logits

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The word embeddings ``(B, L, D)`` of token ids (the output of ``get_input_embeddings()``)."""
        return self.model.get_input_embeddings()(x)

    def forward_embedded(self, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from word embeddings ``(B, L, D)``; ``mask`` ``(B, L)`` marks the attended tokens."""
        if mask is None:
            mask = torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
        return self.model(inputs_embeds=emb, attention_mask=mask.long()).logits

    def attentions(self, x: torch.Tensor, emb: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits ``(B, K)`` and each layer's attention probabilities ``(B, heads, L, L)`` (query x key) for
        token ids ``x``; with ``emb`` (their word embeddings, e.g. requiring grad) the forward starts from it."""
        ids = {"input_ids": x} if emb is None else {"inputs_embeds": emb}
        out = self.model(**ids, attention_mask=self.mask(x), output_attentions=True)
        if not out.attentions:
            raise XattrConfigError(f"{type(self.model).__name__} returns no attention maps")
        return out.logits, tuple(out.attentions)


def load_hf(path: str | Path, dtype: torch.dtype = torch.float32, random: bool = False) -> HFClassifier:
    """The classifier in ``path`` with its tokenizer, in eval mode (local files only); ``random``: its
    architecture (``config.json``) with freshly initialised weights."""
    folder = check_folder(path)
    tr = transformers_module()
    tokenizer = load_tokenizer(folder)
    try:
        if random:
            config = tr.AutoConfig.from_pretrained(str(folder), local_files_only=True)
            config._attn_implementation = "eager"
            model = tr.AutoModelForSequenceClassification.from_config(config)
        else:
            model = tr.AutoModelForSequenceClassification.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True, attn_implementation="eager", dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise XattrConfigError(f"model.path {str(folder)!r} holds no sequence classifier "
                               f"({str(e).splitlines()[0]}); put a model saved with save_pretrained there") from None
    return HFClassifier(model.eval(), tokenizer).eval()


def labels_of(model: nn.Module) -> list[str]:
    """Class names from the model config's ``id2label``."""
    id2label: Mapping = getattr(getattr(model, "config", None), "id2label", None) or {}
    n = int(model.config.num_labels)
    return [str(id2label.get(i, id2label.get(str(i), f"class {i}"))) for i in range(n)]


def save_hf(path: str | Path, net: HFClassifier, half: bool = True, **meta: Any) -> Path:
    """Write ``net`` (model and tokenizer) in the HuggingFace layout, the weights in float16 when ``half``
    (half the file; :func:`load_hf` reads them back as float32); ``meta`` goes into ``xattr.json``."""
    import json

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    n = getattr(net.model.config, "max_position_embeddings", None)
    if n is not None:  # the datasets cut texts at the model's positions
        net.tokenizer.model_max_length = int(n)
    import copy

    model = copy.deepcopy(net.model).half() if half else net.model
    model.save_pretrained(str(folder))
    net.tokenizer.save_pretrained(str(folder))
    (folder / "xattr.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return folder


__all__ = ["HFClassifier", "check_folder", "encoder_layers", "labels_of", "load_hf", "save_hf"]
