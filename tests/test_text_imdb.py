"""IMDB text path: tokenizer, vocabulary, padding-invariant LSTM, rendering, the training recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xattr.data.imdb import IMDB, Vocab, build_vocab, collate, load_glove, tokenize
from xattr.errors import XattrConfigError
from xattr.models.text import LSTMClassifier, load_imdb_lstm, save_imdb_lstm
from xattr.viz.tokens import render_html, render_terminal

REPO = Path(__file__).resolve().parents[1]


def test_tokenize_like_basic_english() -> None:
    text = "Henson's talent.<br /><br />It's \"great\" (really)!"
    assert tokenize(text) == ["henson", "'", "s", "talent", ".", "it", "'", "s", "great", "(", "really", ")", "!"]


def test_collate_pads_right_and_masks() -> None:
    vocab = Vocab(["<pad>", "<unk>", "a", "b"])
    rows = [{"id": "r0", "label": 1, "text": "a b a"}, {"id": "r1", "label": 0, "text": "b zzz"}]
    ds = IMDB("unused", "test", vocab, rows=rows)
    batch = collate([ds[0], ds[1]])
    assert batch["x"].tolist() == [[2, 3, 2], [3, 1, 0]]
    assert batch["mask"].tolist() == [[True, True, True], [True, True, False]]
    assert batch["target"].tolist() == [1, 0] and batch["label"].tolist() == [1, 0]
    assert batch["id"] == ["r0", "r1"] and batch["index"].tolist() == [0, 1]
    with pytest.raises(XattrConfigError, match="truncation"):
        IMDB("unused", "test", vocab, rows=rows, truncate="middle")


@pytest.mark.parametrize("pool", ["last", "max", "mean"])
def test_lstm_prediction_ignores_padding(pool: str) -> None:
    net = LSTMClassifier(30, 8, 6, 4, pool=pool).eval()
    x = torch.randint(2, 30, (1, 9))
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], 1)
    assert torch.allclose(net(x), net(padded), atol=1e-6)
    assert list(net.xattr_layers)[:5] == ["embedding", "rnn_1", "rnn_2", "rnn_3", "rnn_4"]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = LSTMClassifier(10, 4, 5, 2).eval()
    vocab = Vocab(["<pad>", "<unk>"] + [f"w{i}" for i in range(8)])
    save_imdb_lstm(tmp_path / "m.pt", net, vocab, test_acc=0.5)
    net2, vocab2 = load_imdb_lstm(tmp_path / "m.pt")
    x = torch.randint(2, 10, (2, 6))
    assert torch.allclose(net(x), net2(x), atol=1e-2)  # embedding stored in float16
    assert vocab2.itos == vocab.itos and net2.meta["test_acc"] == 0.5
    with pytest.raises(XattrConfigError, match="missing"):
        load_imdb_lstm(tmp_path / "none.pt")


def test_render_levels() -> None:
    toks = ["bad", "movie", "great", "<x>"]
    html = render_html(toks, [0.1, 0.5, 0.9, 0.0], normalize=False)
    assert "background:#ff4d4d" in html.split("great")[0].split("movie")[-1] or '#ff4d4d" title="0.90">great' in html
    assert '#ffb347" title="0.50">movie' in html and ">bad<" not in html and "&lt;x&gt;" in html
    term = render_terminal(toks, torch.tensor([0.0, 1.0, 0.5, 0.2]))  # normalised: movie red, great orange
    assert "\033[41;97mmovie" in term and "\033[43;30mgreat" in term and term.startswith("bad ")
    with pytest.raises(ValueError, match="tokens"):
        render_html(toks, [0.1])


@pytest.mark.shared
def test_glove_table(shared_data: Path) -> None:
    vocab = build_vocab([{"text": "the movie was great"}])
    table, found = load_glove(shared_data / "glove" / "glove.6B.50d.top50k.txt.gz", vocab)
    assert found == 4 and table.shape == (6, 50) and (table[0] == 0).all()


@pytest.mark.shared
@pytest.mark.slow
def test_recipe_trains_above_chance(shared_data: Path, tmp_path: Path) -> None:
    """The IMDB LSTM recipe (python -m xattr.train recipe=imdb_lstm), small: above chance in 3 epochs."""
    import json

    from tests.test_train import compose_train
    from xattr.train import train

    cfg = compose_train(["recipe=imdb_lstm", f"paths.data_dir={shared_data}", "data.limit=1800", "data.test_limit=400",
                         "dataset.max_len=60", "net.hidden_size=32", "optimizer.lr=0.003",
                         "dataset.build_vocab.max_size=8000", "trainer.accelerator=cpu",
                         "trainer.enable_progress_bar=false", "logger=none"], tmp_path)
    res = json.loads((train(cfg) / "results.json").read_text())
    assert res["test_acc"] > 0.6, res


def test_plain_rendering_marks_levels_without_escape_codes():
    from xattr.viz.tokens import render_plain

    out = render_plain(["a", "movie", "great", "plot"], torch.tensor([0.0, 1.0, 0.5, 0.2]))
    assert out == "a [[movie]] [great] plot" and "\033" not in out
