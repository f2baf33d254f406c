"""SST-2 (Socher et al., EMNLP 2013; the binary sentence split of Kim 2014, ``stsa.binary.{train,dev,test}``):
one sentence a line, ``<label> <tokenised sentence>``, read from ``../shared/data/sst2``.

The sentences become rows as :func:`xattr.data.imdb.read_imdb` gives them (``id``, ``label``, ``text``), so
:class:`xattr.data.imdb.IMDB` encodes them with the model's vocabulary or tokenizer (a HuggingFace model
folder: ``[CLS] words [SEP]``) and batches them the same way (``mask``, ``special``).

>>> ds = SST2(root, "test", "assets/text/imdb_transformer")      # the transformer's tokenizer
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xattr.data.imdb import IMDB
from xattr.errors import XattrConfigError, missing_file, unknown

SPLITS = ("train", "dev", "test")


def read_sst2(root: str | Path, split: str = "test", limit: int | None = None) -> list[dict]:
    """The sentences of ``split`` as rows (``id`` ``<split>/<line>``, ``label`` 0/1, ``text``), in file order."""
    if split not in SPLITS:
        raise unknown("SST-2 split", split, SPLITS)
    path = Path(root) / f"stsa.binary.{split}"
    if not path.is_file():
        raise missing_file("SST-2 sentences", path, "stsa.binary.{train,dev,test}, see ../shared/data/README.md")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            label, _, text = line.strip().partition(" ")
            if label not in ("0", "1"):
                raise XattrConfigError(f"bad SST-2 line {i + 1} of {path}: {line[:40]!r}; valid choices: "
                                       "'<0|1> <sentence>'")
            rows.append({"id": f"{split}/{i}", "label": int(label), "text": text})
            if limit is not None and len(rows) >= limit:
                break
    return rows


class SST2(IMDB):
    """SST-2 sentences of one split as token batches (the arguments of :class:`xattr.data.imdb.IMDB`)."""

    def __init__(self, root: str | Path, split: str, vocab: Any, rows: list[dict] | None = None, **kw: Any) -> None:
        super().__init__(root, split, vocab, rows=rows if rows is not None else read_sst2(root, split), **kw)


__all__ = ["SPLITS", "SST2", "read_sst2"]
