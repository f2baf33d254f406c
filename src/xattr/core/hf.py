"""The HuggingFace pieces that both the models and the datasets need: ``transformers`` imported on demand
(the optional extra ``.[hf]``), a model folder checked, its tokenizer loaded from local files only.

Kept in ``core`` because ``xattr.models.hf`` (the classifier) and ``xattr.data.imdb`` (texts tokenised with the
model's tokenizer) are siblings that must not import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xattr.errors import XattrConfigError, missing_file

FILES_HINT = ("a transformers sequence classifier saved with save_pretrained (config.json, model.safetensors) "
              "and its tokenizer (tokenizer.save_pretrained); nothing is downloaded")


def transformers_module():
    """``transformers``, quiet (errors only, no progress bars), or one line saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise XattrConfigError("HuggingFace models need the transformers package: pip install -e '.[hf]'") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def is_model_folder(path: Any) -> bool:
    """True for a folder holding a ``config.json`` (what ``save_pretrained`` writes)."""
    return path is not None and (Path(str(path)) / "config.json").is_file()


def check_folder(path: Any) -> Path:
    """The model folder, or one error naming it and what belongs there (``model.path``)."""
    if path in (None, "", "???"):
        raise XattrConfigError(f"missing model.path: the folder of {FILES_HINT}")
    folder = Path(str(path))
    if not is_model_folder(folder):
        raise missing_file("HuggingFace model folder (model.path)", folder, FILES_HINT)
    return folder


def load_tokenizer(path: str | Path):
    """The tokenizer saved in the model folder ``path`` (local files only)."""
    folder = check_folder(path)
    try:
        return transformers_module().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise XattrConfigError(f"no tokenizer in model.path {str(folder)!r} ({str(e).splitlines()[0]}); "
                               f"put {FILES_HINT}") from None


SPECIAL_WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def word_tokenizer(words: list[str], folder: str | Path):
    """A BERT word-level tokenizer (lower case, punctuation split off, no word pieces: a word outside
    ``words`` is ``[UNK]``) over ``[PAD] [UNK] [CLS] [SEP] [MASK]`` + ``words``, its files written to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join([*SPECIAL_WORDS, *words]) + "\n")
    return transformers_module().BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)


def pre_tokenize(texts) -> list[list[str]]:
    """The words a BERT tokenizer sees in each text (its normaliser: lower case, accents stripped; its
    pre-tokeniser: white space and punctuation), for counting a vocabulary."""
    transformers_module()
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    return [[w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))] for t in texts]


def encode(tokenizer: Any, text: str, max_len: int | None = None, truncate: str = "head") -> list[int]:
    """Token ids of ``text`` with the tokenizer's special tokens (``[CLS] ... [SEP]``); at most ``max_len`` ids
    in all, the words cut at the ``head`` (keep the first) or the ``tail`` (keep the last)."""
    limit = getattr(tokenizer, "model_max_length", None)  # the model's positions, when the tokenizer knows them
    if limit is not None and limit < 1_000_000:
        max_len = int(limit) if max_len is None else min(int(max_len), int(limit))
    tokenizer.truncation_side = "right" if truncate == "head" else "left"
    out = tokenizer(text, truncation=max_len is not None, max_length=None if max_len is None else int(max_len))
    return list(out["input_ids"])


class TokenizerVocab:
    """A HuggingFace tokenizer seen as xattr's :class:`~xattr.core.vocab.Vocab` (``encode`` of a text,
    ``decode`` of ids, ``pad_index``, ``unk_index``, ``len``) plus ``special_ids`` (``[CLS]``, ``[SEP]``, ...; not ``[PAD]``, not ``[UNK]``: an unknown word is a word).

    Args:
        tokenizer: a ``transformers`` tokenizer, or the model folder holding one.
    """

    def __init__(self, tokenizer: Any) -> None:
        if isinstance(tokenizer, str | Path):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            raise XattrConfigError("the model's tokenizer has no [PAD] token; set tokenizer.pad_token and save it")
        self.pad_index = int(tokenizer.pad_token_id)
        self.unk_index = int(tokenizer.unk_token_id if tokenizer.unk_token_id is not None else self.pad_index)
        self.special_ids = tuple(sorted({int(i) for i in tokenizer.all_special_ids} - {self.pad_index, self.unk_index}))

    def __len__(self) -> int:
        return len(self.tokenizer)

    @property
    def stoi(self) -> dict[str, int]:
        """Token -> id (built once: ``get_vocab`` copies the whole table)."""
        if getattr(self, "_stoi", None) is None:
            self._stoi = dict(self.tokenizer.get_vocab())
        return self._stoi

    def encode_text(self, text: str, max_len: int | None = None, truncate: str = "head") -> list[int]:
        return encode(self.tokenizer, text, max_len, truncate)

    def decode(self, ids) -> list[str]:
        return list(self.tokenizer.convert_ids_to_tokens([int(i) for i in ids]))

    def is_special(self, ids) -> list[bool]:
        return [int(i) in self.special_ids for i in ids]


__all__ = ["SPECIAL_WORDS", "TokenizerVocab", "pre_tokenize", "word_tokenizer", "FILES_HINT", "check_folder", "encode", "is_model_folder", "load_tokenizer", "transformers_module"]
