"""``python -m xattr.report``: built from a tiny constructed multirun whose numbers are known (three methods,
four images, scores set by hand), Kendall's tau against hand values, and the HTML page in a real browser
(Chromium through Playwright; skipped with the reason where neither can be installed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xattr.core.store import RunStore
from xattr.engine.compare import agreement, kendall, load_runs, method_table, short_score
from xattr.engine.report import plot_curves
from xattr.metrics.summary import summarise_run_scores
from xattr.report import main

#: per method, per image: m1/s (higher better), m2/s (higher better), complexity/complexity (lower better)
SCORES = {
    "A": {"m1/s": [0.9, 0.8, 0.7, 0.6], "m2/s": [0.1, 0.2, 0.1, 0.2], "complexity/complexity": [1.0, 1.0, 1.0, 1.0]},
    "B": {"m1/s": [0.5, 0.5, 0.5, 0.5], "m2/s": [0.5, 0.4, 0.5, 0.4], "complexity/complexity": [2.0, 2.0, 2.0, 2.0]},
    "C": {"m1/s": [0.1, 0.2, 0.3, 0.2], "m2/s": [0.9, 0.9, 0.8, 0.8], "complexity/complexity": [3.0, 3.0, 3.0, 3.0]},
}


def multirun(root: Path) -> Path:
    for k, (name, scores) in enumerate(SCORES.items()):
        store = RunStore(root / str(k))
        store.write_config({"method": {"_target_": f"xattr.methods.fake.{name}", "beta": 1}, "seed": 0})
        batch = {"id": [f"im{i}" for i in range(4)], "index": torch.arange(4), "label": torch.zeros(4).long()}
        maps = torch.arange(4 * 16, dtype=torch.float32).view(4, 1, 4, 4) * (k + 1)
        probs = torch.tensor([[0.7, 0.3]] * 4)
        store.write("0", batch, torch.zeros(4).long(), maps, probs, {s: torch.tensor(v) for s, v in scores.items()})
        rows = store.per_image()
        store.write_report_tables(rows, summarise_run_scores(rows))
    plot_curves({"m/deletion": np.array([[1.0, 0.5, 0.2]])}, root / "0" / "curves.png")  # a run's own figure
    return root


def test_kendall_tau_of_two_given_rankings_is_the_hand_value():
    # one discordant pair of six: (5 - 1) / 6
    assert kendall(np.array([1.0, 2, 3, 4]), np.array([2.0, 1, 3, 4])) == pytest.approx(2 / 3)
    assert kendall(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1)
    # the figure's labels: a metric with one score by its name alone
    assert short_score("relevance_mass/relevance_mass") == "relevance_mass"
    assert short_score("insertion_deletion/insertion") == "insertion_deletion/insertion"


def test_report_of_a_constructed_multirun_has_the_known_numbers(tmp_path):
    root = multirun(tmp_path / "multi")
    runs = load_runs([root])
    table = method_table(runs)
    assert list(table.index) == ["A", "B", "C"]
    assert table.loc["A", "m1/s"] == pytest.approx(0.75) and table.loc["C", "m2/s"] == pytest.approx(0.85)
    assert table.loc["B", "m1/s s.e."] == pytest.approx(0.0)
    sd = np.std([0.9, 0.8, 0.7, 0.6], ddof=1) / 2
    assert table.loc["A", "m1/s s.e."] == pytest.approx(sd)
    assert list(table["m1/s rank"]) == [1, 2, 3] and list(table["m2/s rank"]) == [3, 2, 1]
    assert list(table["complexity/complexity rank"]) == [1, 2, 3]  # lower is better
    scores = ["m1/s", "m2/s", "complexity/complexity"]
    tau, low, high = agreement(runs, scores, n_boot=50)
    assert tau.at["m1/s", "m2/s"] == pytest.approx(-1) and tau.at["m1/s", "complexity/complexity"] == pytest.approx(1)
    assert high.at["m1/s", "m2/s"] < 1 and high.at["m1/s", "complexity/complexity"] == pytest.approx(1)
    assert main([str(root), "--out", str(tmp_path / "rep"), "--n-boot", "20"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "m1/s vs m2/s" in md and "0.75 ± 0.065 (1)" in md and "### A" in md
    assert (tmp_path / "rep" / "agreement.png").stat().st_size > 0 and (tmp_path / "rep" / "gallery.png").is_file()


def test_saliency_cards_measure_seeds_and_the_sweep(tmp_path):
    """Method A again with another seed (maps + 0.5 at one pixel) and with beta=2 (m1/s 0.25 lower): the card
    names the largest map difference across seeds and each score's range over the sweep."""
    from xattr.engine.compare import cards

    root = multirun(tmp_path / "multi")
    for k, (seed, beta, shift) in enumerate([(1, 1, 0.0), (0, 2, -0.25)], start=3):
        store = RunStore(root / str(k))
        store.write_config({"method": {"_target_": "xattr.methods.fake.A", "beta": beta}, "seed": seed})
        batch = {"id": [f"im{i}" for i in range(4)], "index": torch.arange(4), "label": torch.zeros(4).long()}
        maps = torch.arange(4 * 16, dtype=torch.float32).view(4, 1, 4, 4)
        if seed == 1:
            maps[2, 0, 1, 1] += 0.5
        scores = {s: torch.tensor(v) + (shift if s == "m1/s" else 0.0) for s, v in SCORES["A"].items()}
        store.write("0", batch, torch.zeros(4).long(), maps, torch.tensor([[0.7, 0.3]] * 4), scores)
        rows = store.per_image()
        store.write_report_tables(rows, summarise_run_scores(rows))
    runs = load_runs([root])
    table = method_table(runs)
    assert sorted(table.index)[:3] == ["A beta=1 seed=0", "A beta=1 seed=1", "A beta=2 seed=0"]
    card = cards(runs, table)["A"]
    assert card["runs"] == "3" and card["determinism across seeds"] == "largest map difference 0.5"
    assert "m1/s range 0.25" in card["hyper-parameter sensitivity"] and "m2/s range 0" in card["hyper-parameter sensitivity"]


def test_report_of_a_folder_without_runs_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no finished runs of python -m xattr.run under" in err


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return os.environ.get("XATTR_CHROMIUM")


def test_report_page_in_a_real_browser(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium binary (make install runs apt-get install chromium where apt works)")
    root = multirun(tmp_path / "multi")
    assert main([str(root), "--out", str(tmp_path / "rep"), "--n-boot", "10"]) == 0
    summaries = {name: pd.read_csv(root / str(k) / "summary.csv") for k, name in enumerate(SCORES)}
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "rep" / "report.html").as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        cells = page.eval_on_selector_all("#methods tbody tr", "rows => rows.map(r => [...r.children].map(c => c.innerText))")
        headers = page.eval_on_selector_all("#methods thead th", "ths => ths.map(t => t.innerText)")
        browser.close()
    assert not errors, errors
    assert len(widths) == 3 and all(w > 0 for w in widths)  # agreement, gallery, run 0's curves
    col = {h: i for i, h in enumerate(headers)}
    for row in cells:
        s = summaries[row[0]].set_index("score")["mean"]
        for score in ("m1/s", "m2/s", "complexity/complexity"):
            assert float(row[col[score]]) == pytest.approx(s[score], rel=1e-3), (row[0], score)


def test_two_runs_of_one_method_setting_are_one_error_naming_both(tmp_path, capsys):
    """An older sweep's run beside a newer one (same method, settings, seed) would be two rows named alike in
    every ranking and the agreement: the report refuses, naming both folders."""
    root = multirun(tmp_path / "multi")
    shutil.copytree(root / "0", root / "old" / "0")
    assert main([str(root), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(root / "0") in err and str(root / "old" / "0") in err
    assert not (tmp_path / "rep" / "report.md").exists()


def test_meta_eval_grows_in_the_same_run_folders():
    """make meta-eval ARGS="dataset.limit=N" resumes the default sweep's run folders (the images already scored
    are skipped) instead of writing new ones beside them; the other keys config.yaml leaves out still are."""
    from hydra import compose, initialize_config_dir

    from xattr.config import CONF_DIR, run_dirname

    def folder(overrides: list[str]) -> tuple[str, list[str]]:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
        return run_dirname(cfg.hydra.job.override_dirname), list(cfg.hydra.job.config.override_dirname.exclude_keys)

    base, keys = folder(["experiment=meta_eval", "method=gradient"])
    grown, _ = folder(["experiment=meta_eval", "method=gradient", "dataset.limit=50"])
    assert grown == base == folder(["method=gradient"])[0]
    assert set(folder([])[1]) <= set(keys)
    assert folder(["experiment=meta_eval", "method=grad_cam"])[0] != base


class _Halved:
    """A metric whose ``summarise`` is known by hand: each score's plain mean of its finite values halved, s.e.
    -1 and the number of values it was given; it records what it was called with."""

    def __init__(self):
        self.calls = []

    def summarise(self, scores):
        self.calls.append({k: v.clone() for k, v in scores.items()})
        return {k: [float(np.nanmean(v.numpy())) / 2, -1.0, len(v)] for k, v in scores.items()}


def test_run_summary_by_hand_skips_the_meta_columns_and_lets_a_metric_summarise_its_own():
    """``summarise_run_scores`` against numpy: every meta column left out, other columns' finite mean and s.e.
    (ddof 1 / sqrt n, NaN filtered), a metric's own ``summarise`` for its prefixed columns (called with the
    names after the prefix, float64 values, NaN kept), a metric with no column not called."""
    frame = pd.DataFrame({
        "id": ["a", "b", "c", "d"], "index": [5, 6, 7, 8], "label": [0, 1, -1, 0], "target": [0, 1, 2, 0],
        "prob": [0.9, 0.8, 0.7, 0.6], "top1": [0, 0, 2, 1], "top1_prob": [0.9, 0.5, 0.7, 0.6],
        "other/x": [1.0, float("nan"), 4.0, 7.0], "m/s": [0.2, 0.4, float("nan"), 1.0], "m/t": [3, 3, 3, 5]})
    m, unused = _Halved(), _Halved()
    out = summarise_run_scores(frame, {"m": m, "none": unused})
    assert list(out.columns) == ["score", "mean", "sem", "n"]
    got = {r.score: (r.mean, r.sem, r.n) for r in out.itertuples()}
    assert list(got) == ["other/x", "m/s", "m/t", "top1_accuracy"]
    x = np.array([1.0, 4.0, 7.0])
    assert got["other/x"] == pytest.approx((4.0, np.std(x, ddof=1) / np.sqrt(3), 3))
    assert got["m/s"] == pytest.approx((np.mean([0.2, 0.4, 1.0]) / 2, -1.0, 4))
    assert got["m/t"] == pytest.approx((3.5 / 2, -1.0, 4))
    assert unused.calls == [] and len(m.calls) == 1 and sorted(m.calls[0]) == ["s", "t"]
    assert m.calls[0]["t"].dtype == torch.float64 and m.calls[0]["t"].tolist() == [3.0, 3.0, 3.0, 5.0]
    # top-1 accuracy over the labelled images only (label >= 0; label 0 counts): 1 of the 3 right
    acc = np.array([1.0, 0.0, 0.0])
    assert got["top1_accuracy"] == pytest.approx((1 / 3, np.std(acc, ddof=1) / np.sqrt(3), 3))


def test_run_summary_without_labels_has_no_accuracy_row():
    """No ``label`` column, or every label -1 (unlabelled images): no top-1 accuracy row; without metrics every
    column gets its mean and s.e.; one labelled image of label 0 is enough for the row."""
    plain = pd.DataFrame({"m/s": [1.0, 3.0]})
    out = summarise_run_scores(plain)
    assert out.to_dict("records") == [{"score": "m/s", "mean": 2.0, "sem": pytest.approx(1.0), "n": 2}]
    unlabelled = plain.assign(label=[-1, -1], top1=[0, 1])
    assert list(summarise_run_scores(unlabelled)["score"]) == ["m/s"]
    one = plain.assign(label=[-1, 0], top1=[0, 0])
    row = summarise_run_scores(one).set_index("score").loc["top1_accuracy"]
    assert (row["mean"], row["n"]) == (1.0, 1) and np.isnan(row["sem"])
    empty = summarise_run_scores(pd.DataFrame({"id": ["a"]}))
    assert list(empty.columns) == ["score", "mean", "sem", "n"] and len(empty) == 0
