"""IMDB sentiment reviews (Maas et al., ACL 2011) as token batches, with a GloVe-initialised vocabulary.

Reads ``train.jsonl.gz`` / ``test.jsonl.gz`` of ``../shared/data/imdb`` (one JSON object a line: ``id``,
``label``, ``rating``, ``text``). Tokenisation follows torchtext's ``basic_english`` (lower case, ``<br />``
dropped, punctuation split off), which is what the InputIBA reference feeds its LSTM, so a review prints
as in Table 1 of ch. 6 ("henson ' s talent .").

Batches are dicts (docs/ARCHITECTURE.md): ``x`` ``(B, L)`` long token ids (right-padded with ``<pad>`` = 0),
``mask`` ``(B, L)`` bool (True on the tokens a metric may perturb: the real ones), ``target`` and ``label``
``(B,)`` long, ``id`` list of str, ``index`` ``(B,)`` long (row in the split).

A HuggingFace model (``model=hf``, :mod:`xattr.models.hf`) brings its tokenizer: ``vocab`` is then the model
folder (or a tokenizer), reviews are encoded with it (``<br />`` removed first) as ``[CLS] words [SEP]``,
padded with its ``[PAD]``, and batches add ``special`` ``(B, L)`` bool (``[CLS]``, ``[SEP]``, ...). With
``special_tokens: exclude`` (the default) those are outside ``mask``: insertion / deletion and Sensitivity-N
never remove them, as they never touch padding (a transformer without its ``[CLS]`` is a different input
format, not a less informative text); ``include`` puts them in.

>>> vocab = build_vocab(read_imdb(root, "train"), max_size=25_000)
>>> ds = IMDB(root, "test", vocab, max_len=400)
>>> loader = DataLoader(ds, batch_size=32, collate_fn=collate)
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from xattr.core.hf import TokenizerVocab, is_model_folder, pre_tokenize, word_tokenizer
from xattr.core.vocab import PAD, UNK, Vocab
from xattr.errors import XattrConfigError, missing_file, unknown

SPLITS = ("train", "test")
TRUNCATIONS = ("head", "tail")
SPECIAL_TOKENS = ("exclude", "include")
_BR = re.compile(r"<br\s*/?>")  # IMDB's line breaks: dropped before either tokenisation

_PATTERNS = [
    (_BR, " "),
    (re.compile(r"\'"), " '  "),
    (re.compile(r"\""), ""),
    (re.compile(r"\."), " . "),
    (re.compile(r","), " , "),
    (re.compile(r"\("), " ( "),
    (re.compile(r"\)"), " ) "),
    (re.compile(r"\!"), " ! "),
    (re.compile(r"\?"), " ? "),
    (re.compile(r"\;"), " "),
    (re.compile(r"\:"), " "),
    (re.compile(r"\s+"), " "),
]


def tokenize(text: str) -> list[str]:
    """torchtext ``basic_english``: lower case, ``<br />`` removed, ``. , ( ) ! ? '`` split off,
    ``" ; :`` dropped, split on white space."""
    text = text.lower()
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text.split()


def read_imdb(root: str | Path, split: str = "train", limit: int | None = None) -> list[dict]:
    """The reviews of ``split`` as dicts (``id``, ``label``, ``rating``, ``text``), in file order."""
    if split not in SPLITS:
        raise unknown("IMDB split", split, SPLITS)
    path = Path(root) / f"{split}.jsonl.gz"
    if not path.is_file():
        raise missing_file("IMDB reviews", path, "the Large Movie Review Dataset as jsonl.gz, see ../shared/data/README.md")
    rows = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, EOFError) as e:
        why = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise XattrConfigError(f"cannot read IMDB reviews {path} (line {len(rows) + 1}: {why}); valid choices: "
                               "gzip-compressed UTF-8 JSON lines (id, label, text), see ../shared/data/README.md") from None
    return rows


def balanced_subset(rows: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """``n`` rows, half of each label, drawn with a fixed seed (the files are sorted by label)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for label in (0, 1):
        idx = [i for i, r in enumerate(rows) if r["label"] == label]
        pick = torch.randperm(len(idx), generator=g)[: n // 2 + (n % 2) * label].tolist()
        out += [rows[idx[i]] for i in pick]
    order = torch.randperm(len(out), generator=g).tolist()
    return [out[i] for i in order]


def build_vocab(rows: Iterable[dict], max_size: int = 25_000, min_freq: int = 1) -> Vocab:
    """The ``max_size`` most frequent tokens of ``rows`` (ties by first appearance) after pad and unk."""
    counts: Counter[str] = Counter()
    for r in rows:
        counts.update(tokenize(r["text"]))
    words = [w for w, c in counts.most_common() if c >= min_freq and w not in (PAD, UNK)][:max_size]
    return Vocab([PAD, UNK, *words])


def build_tokenizer(rows: Iterable[dict], max_size: int = 20_000, min_freq: int = 1,
                    folder: str | Path | None = None) -> TokenizerVocab:
    """A BERT word-level tokenizer over the ``max_size`` most frequent words of ``rows`` (counted as the
    tokenizer splits them, ``<br />`` removed): what ``python -m xattr.train recipe=imdb_transformer`` trains
    its transformer on and saves beside it. ``folder``: where its ``vocab.txt`` goes (a temporary one)."""
    import tempfile

    counts: Counter[str] = Counter()
    for words in pre_tokenize([_BR.sub(" ", r["text"]) for r in rows]):
        counts.update(words)
    words = [w for w, c in counts.most_common() if c >= min_freq][:max_size]
    return TokenizerVocab(word_tokenizer(words, folder or tempfile.mkdtemp(prefix="xattr-tokenizer-")))


def vocab_from_checkpoint(path: str | Path) -> Vocab:
    """The vocabulary stored in an IMDB LSTM checkpoint (key ``itos``)."""
    path = Path(path)
    if not path.is_file():
        raise missing_file("IMDB LSTM checkpoint (for its vocabulary)", path, "run python -m xattr.train recipe=imdb_lstm")
    return Vocab(torch.load(path, map_location="cpu", weights_only=True)["itos"])


def load_glove(path: str | Path, vocab: Vocab, dim: int = 50, seed: int = 0) -> tuple[torch.Tensor, int]:
    """An embedding table ``(len(vocab), dim)`` from GloVe text vectors: found words get their vector,
    the others N(0, 0.1^2) (fixed seed), ``<pad>`` zeros. Returns the table and the number found."""
    path = Path(path)
    if not path.is_file():
        raise missing_file("GloVe vectors", path, "glove.6B.50d text file (gz), see ../shared/data/README.md")
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(len(vocab), dim, generator=g) * 0.1
    table[vocab.pad_index] = 0
    found = 0
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            word, *vals = line.rstrip().split(" ")
            i = vocab.stoi.get(word)
            if i is not None and i > 1 and len(vals) == dim:
                table[i] = torch.tensor([float(v) for v in vals])
                found += 1
    return table, found


class IMDB(Dataset):
    """Encoded reviews of one split; items are ``(ids, label, id, index)``; see :func:`collate`.

    Args:
        root: folder with ``{train,test}.jsonl.gz``.
        split: ``train`` or ``test``.
        vocab: the model's vocabulary, the path of a checkpoint of :func:`xattr.models.text.save_imdb_lstm`
            (which carries it), or a HuggingFace model folder / tokenizer (its tokenizer encodes the reviews).
        max_len: keep at most this many tokens (``truncate``: the ``head`` or the ``tail`` of the review).
        limit: keep a balanced random subset of this many reviews (fixed ``seed``); None keeps all.
        rows: already-read rows (skips reading ``root``).
        special_tokens: ``exclude`` (default) or ``include`` the tokenizer's ``[CLS]`` / ``[SEP]`` in the
            batch's ``mask`` (what metrics perturb); see the module docstring.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        vocab: Vocab | str | Path,
        max_len: int | None = 400,
        limit: int | None = None,
        truncate: str = "head",
        seed: int = 0,
        rows: Sequence[dict] | None = None,
        preprocess: object = None,
        special_tokens: str = "exclude",
    ) -> None:
        del preprocess  # the engine passes the image preprocessing to every dataset; text has none
        if isinstance(vocab, Vocab | TokenizerVocab):
            pass
        elif hasattr(vocab, "all_special_ids") or is_model_folder(vocab):  # a HuggingFace tokenizer or folder
            vocab = TokenizerVocab(vocab)
        else:
            vocab = vocab_from_checkpoint(vocab)
        if truncate not in TRUNCATIONS:
            raise unknown("truncation", truncate, TRUNCATIONS)
        if special_tokens not in SPECIAL_TOKENS:
            raise unknown("dataset.special_tokens", special_tokens, SPECIAL_TOKENS)
        self.special_tokens = special_tokens
        rows = list(rows) if rows is not None else read_imdb(root, split)
        if limit is not None and limit < len(rows):
            rows = balanced_subset(rows, limit, seed)
        self.rows, self.vocab, self.max_len, self.truncate = rows, vocab, max_len, truncate
        self.ids = [self._encode(r["text"]) for r in rows]

    def _encode(self, text: str) -> torch.Tensor:
        if isinstance(self.vocab, TokenizerVocab):
            return torch.tensor(self.vocab.encode_text(_BR.sub(" ", text), self.max_len, self.truncate), dtype=torch.long)
        ids = self.vocab.encode(tokenize(text)) or [self.vocab.unk_index]
        if self.max_len is not None and len(ids) > self.max_len:
            ids = ids[: self.max_len] if self.truncate == "head" else ids[-self.max_len :]
        return torch.tensor(ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, items: Sequence[tuple[torch.Tensor, int, str, int]]) -> dict:
        """The loader's ``collate_fn`` for this dataset (:func:`collate` with its padding id; with a tokenizer
        also ``special``, and ``mask`` without the special tokens unless ``special_tokens: include``)."""
        batch = collate(items, self.vocab.pad_index)
        special_ids = getattr(self.vocab, "special_ids", ())
        if special_ids:
            batch["special"] = torch.isin(batch["x"], torch.tensor(special_ids)) & batch["mask"]
            if self.special_tokens == "exclude":
                batch["mask"] = batch["mask"] & ~batch["special"]
        return batch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str, int]:
        return self.ids[i], int(self.rows[i]["label"]), str(self.rows[i]["id"]), i


def collate(items: Sequence[tuple[torch.Tensor, int, str, int]], pad_index: int = 0) -> dict:
    """Right-pad to the longest review of the batch; see the module docstring for the keys."""
    lengths = [len(t) for t, *_ in items]
    x = torch.full((len(items), max(lengths)), pad_index, dtype=torch.long)
    for i, (t, *_) in enumerate(items):
        x[i, : len(t)] = t
    mask = torch.arange(x.shape[1])[None] < torch.tensor(lengths)[:, None]
    label = torch.tensor([lab for _, lab, _, _ in items], dtype=torch.long)
    return {
        "x": x,
        "mask": mask,
        "target": label.clone(),
        "label": label,
        "id": [i for _, _, i, _ in items],
        "index": torch.tensor([j for *_, j in items], dtype=torch.long),
    }
