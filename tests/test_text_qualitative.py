"""The qualitative table of text runs (Table 1 of ch. 6) and the text curves of a multirun."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from xattr.core.store import RunStore
from xattr.core.vocab import Vocab
from xattr.data.imdb import IMDB, collate
from xattr.tables.text_qualitative import qualitative

WORDS = ["<pad>", "<unk>", "great", "boring", "film", "plot", "a"]


def _run(root, method: str, ds: IMDB, maps: torch.Tensor) -> None:
    d = root / method
    d.mkdir()
    (d / "config.yaml").write_text(OmegaConf.to_yaml({"method_name": method, "model": {"name": "tiny"}}))
    batch = collate([ds[i] for i in range(len(ds))])
    store = RunStore(d)
    probs = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    curves = {"insertion_deletion/insertion": torch.rand(2, 3), "insertion_deletion/deletion": torch.rand(2, 3)}
    store.write("batch-2-0", batch, batch["target"], maps, probs,
                scores={"insertion_deletion/insertion": torch.rand(2), "insertion_deletion/deletion": torch.rand(2)},
                curves=curves, x_axis={k: torch.arange(3.0) for k in curves})
    store.per_image().to_parquet(d / "per_image.parquet", index=False)


def test_same_review_by_every_method_in_the_paper_bands(tmp_path, capsys) -> None:
    rows = [{"id": "r0", "label": 1, "text": "a great film"}, {"id": "r1", "label": 0, "text": "boring plot"}]
    ds = IMDB(None, "test", Vocab(WORDS), rows=rows)
    # review r0 = "a great film": scores 0, 1, 0.5 -> great red (>= 0.66), film orange (0.33-0.66), a plain
    _run(tmp_path, "ours", ds, torch.tensor([[0.0, 1.0, 0.5], [0.2, 0.1, 0.0]]))
    # min-max per review: 10, 30, 20 is the same ranking on another scale
    _run(tmp_path, "other", ds, torch.tensor([[10.0, 30.0, 20.0], [1.0, 0.0, 0.0]]))
    df = qualitative([tmp_path], n=2, dataset=ds)
    assert set(df["method"]) == {"ours", "other"} and set(df["review"]) == {"r0", "r1"}
    for m in ("ours", "other"):
        assert df[(df.method == m) & (df.review == "r0")]["tokens"].item() == "a [[great]] [film]"
        assert df[(df.method == m) & (df.review == "r1")]["tokens"].item() == "[[boring]] plot"
    html = (tmp_path / "qualitative.html").read_text()
    assert html.count("#ff4d4d") == 4 and html.count("#ffb347") == 2  # red: great x2, boring x2; orange: film x2
    assert "<b>ours</b>" in html and "<b>other</b>" in html
    assert "\033[41;97mgreat" in capsys.readouterr().out  # the terminal rendering
    for png in ("insdel_insertion.png", "insdel_deletion.png", "insdel_scatter.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert (tmp_path / "qualitative.txt").read_text().count("[[great]]") == 2
