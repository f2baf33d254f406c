"""The Python API (``import xattr``): the same objects as the CLI, one source of defaults, the CLI's errors,
numpy in and out, fitting from any data source, run folders as data, the quickstart end to end."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import xattr
from tests.helpers import compose_cfg
from xattr.config import build, check_values
from xattr.core.checks import naming
from xattr.models.tiny import TinyCNN

REPO = Path(__file__).resolve().parents[1]
FAST = ["dataset=samples", "target=top1", "batch_size=2", "trainer=cpu", "logger=none",
        "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def lite0():
    """EfficientNet-Lite0 with random weights (the architecture and layer roles of the real one)."""
    return xattr.load_model("efficientnet_lite0", weights="random")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    from xattr.run import run

    return run(compose_cfg(FAST + ["model=custom", "method=random",
                                   "dataset.limit=2", "metric=[insertion_deletion]",
                                   "metric.insertion_deletion.points=4"],
                           output_dir=tmp_path_factory.mktemp("api") / "run"))


# --------------------------------------------------------------------------------------------- public names
def test_every_public_name_is_importable_and_documented():
    assert set(xattr.__all__) >= {"load_model", "method", "metric", "fit", "explain", "evaluate", "open_run",
                                  "quantus_explain", "Explanation", "XattrConfigError"}
    assert set(xattr.__all__) == set(xattr._PUBLIC)
    for name in xattr.__all__:
        obj = getattr(xattr, name)
        doc = inspect.getdoc(obj) or ""
        assert len(doc) > 60, f"xattr.{name} has no real docstring"
        if inspect.isfunction(obj):  # every parameter is explained (help() is enough to call it)
            for p in inspect.signature(obj).parameters.values():
                if p.kind not in (p.VAR_POSITIONAL,):
                    assert p.name in doc, f"xattr.{name}: parameter {p.name!r} not in its docstring"
    with pytest.raises(AttributeError, match="valid choices: .*load_model"):
        xattr.load_modle  # noqa: B018
    # `import xattr` imports no heavy package until a name is used (the CLI's start stays fast)
    out = subprocess.run([sys.executable, "-c", "import sys, xattr; print('torch' in sys.modules, 'hydra' in sys.modules)"],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


# --------------------------------------------------------------------------------------------- one source of defaults
@pytest.mark.parametrize("name", xattr.list_methods())
def test_a_method_built_by_the_api_is_the_one_the_cli_builds(name, lite0, saved_run):
    """``xattr.method(name, model)`` == ``build(cfg.method)(model)`` of ``method=<name> model=<model>``:
    the same class with the same parameters, every default read from conf/method/<name>.yaml."""
    over, extra = {}, []
    model, model_args = lite0, ["model=efficientnet_lite0", "model.weights=random"]
    if name == "saved":
        over, extra = {"run_dir": str(saved_run)}, [f"method.run_dir={saved_run}"]
    if name == "input_iba_text":  # a text method: the shipped IMDB LSTM
        model, model_args = xattr.load_model("imdb_lstm"), ["model=imdb_lstm"]
    if name in ("attention_rollout", "chefer"):  # transformer methods: the shipped IMDB transformer
        model, model_args = xattr.load_model("imdb_transformer"), ["model=imdb_transformer"]
    api = xattr.method(name, model, **over)
    cfg = compose_cfg([f"method={name}", *model_args, *extra])
    cli = build(cfg.method)
    if name in ("input_iba_text", "attention_rollout", "chefer"):
        from xattr.methods.text import text_form

        cli = text_form(cli, cfg.model.layers.embedding)
    cli = cli(model=model.net)
    assert type(api) is type(cli)
    assert api.hparams == cli.hparams, (api.hparams, cli.hparams)
    yaml_keys = {str(k) for k in cfg.method if str(k) not in ("_target_", "_partial_")}
    if name not in ("input_iba_text", "attention_rollout", "chefer"):  # (text forms keep the keys they share)
        assert yaml_keys <= set(api.hparams), yaml_keys - set(api.hparams)


@pytest.mark.parametrize("name", xattr.list_metrics())
def test_a_metric_built_by_the_api_is_the_one_the_cli_builds(name):
    api = xattr.metric(name)
    cli = build(compose_cfg([f"metric=[{name}]"]).metric[name])
    assert type(api) is type(cli) and api.hparams == cli.hparams


def test_layer_roles_reach_the_methods_and_overrides_win(lite0):
    assert xattr.method("iba", lite0).hparams["layer"] == "block_4"  # conf/model/efficientnet_lite0.yaml
    assert xattr.method("grad_cam", lite0).hparams["layer"] == "head"
    hp = xattr.method("iba", lite0, beta=1, layer="block_2").hparams
    assert (hp["beta"], hp["layer"], hp["steps"]) == (1, "block_2", 10)
    roles = xattr.load_model("efficientnet_lite0", weights="random", layers={"cam": "block_10"})
    assert xattr.method("grad_cam", roles).hparams["layer"] == "block_10"
    # aliases name layers of a zoo model too (they were silently dropped before)
    named = xattr.load_model("efficientnet_lite0", weights="random", aliases={"stem": "_conv_stem"})
    assert xattr.method("grad_cam", named, layer="stem").layer_path == "_conv_stem"
    with pytest.raises(ValueError, match=r"unknown module path for model\.aliases\.stem '_stem'; valid choices: "):
        xattr.load_model("efficientnet_lite0", weights="random", aliases={"stem": "_stem"})
    assert xattr.method("grad_cam", xattr.load_model("resnet18", weights="random")).hparams["layer"] == "conv5_x"
    # a torchvision ResNet outside the zoo: the roles of conf/model/torchvision.yaml; another arch has none
    r34 = xattr.load_model("resnet34", weights="random")
    assert xattr.method("grad_cam", r34).hparams["layer"] == "layer4"
    with pytest.raises(ValueError, match="needs layer="):
        xattr.method("grad_cam", xattr.load_model("squeezenet1_1", weights="random"))


def test_your_own_module_with_roles_builds_as_model_custom():
    """An nn.Module with its layers named builds what ``model=custom`` (the same module) builds."""
    cfg = compose_cfg(["method=iba", "model=custom"])
    roles = dict(cfg.model.layers)
    own = xattr.load_model(TinyCNN(), layers=roles, name="custom")
    api = xattr.method("iba", own)
    cli = build(cfg.method)(model=own.net)
    assert api.hparams["weights"] == "own" and cli.hparams["weights"] is None  # the one difference: its own weights
    assert {k: v for k, v in api.hparams.items() if k != "weights"} == {k: v for k, v in cli.hparams.items() if k != "weights"}
    bare = xattr.load_model(TinyCNN())
    with pytest.raises(ValueError, match=r"method 'iba' needs layer=\.\.\..*valid choices: .*conv2"):
        xattr.method("iba", bare)
    assert xattr.method("iba", bare, layer="conv2").hparams["layer"] == "conv2"


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("key", "value"), [("beta", -1.0), ("beta", "abc"), ("steps", 0), ("chunk", 0)])
def test_bad_values_raise_the_clis_one_line(key, value, lite0):
    cfg = compose_cfg(["method=iba", "model=efficientnet_lite0", f"method.{key}={value}"])
    with pytest.raises(ValueError) as cli, naming("method."):  # as run.py builds its probe
        check_values(cfg)
        build(cfg.method)(model=lite0.net)
    with pytest.raises(ValueError) as api:
        xattr.method("iba", lite0, **{key: value})
    assert str(api.value) == str(cli.value) and "\n" not in str(api.value)


def test_unknown_names_raise_one_line_with_the_choices(lite0):
    cases = {
        lambda: xattr.method("ibax", lite0): "unknown method 'ibax'; valid choices: attention_rollout, chefer, deepshap, ",
        lambda: xattr.method("iba", lite0, betta=1): "unknown parameter of method 'iba' 'betta'; valid choices: .*beta",
        lambda: xattr.metric("insdel"): "unknown metric 'insdel'; valid choices: avg_sensitivity, axioms, ",
        lambda: xattr.metric("insertion_deletion", pointz=3): "valid choices: .*points",
        lambda: xattr.load_model("vgg61"): "unknown model 'vgg61'; valid choices: .*efficientnet_lite0",
        lambda: xattr.explain(lite0, torch.zeros(2, 3, 32, 32), target=[1, 2, 3]): "3 entries for 2 images",
        lambda: xattr.explain(lite0, torch.zeros(1, 3, 32, 32), target="label"): "valid choices: top1",
        lambda: xattr.open_run(REPO / "conf"): "missing run folder",
    }
    for call, pattern in cases.items():
        with pytest.raises(ValueError, match=pattern) as e:
            call()
            pytest.fail(f"no error for {pattern!r}")
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------- numpy, fit, evaluate
def test_numpy_in_gives_the_tensors_results():
    torch.manual_seed(0)
    model = xattr.load_model(TinyCNN(num_classes=4), layers={"cam": "conv3"}, preprocess={"size": 16})
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 1, 3])
    by_tensor = xattr.explain(model, x, t, "grad_cam").maps
    by_numpy = xattr.explain(model, x.numpy(), t.numpy(), "grad_cam").maps
    torch.testing.assert_close(by_numpy, by_tensor)
    metric = xattr.metric("insertion_deletion", per_step=16, points="all", min_prob=None)
    a = xattr.evaluate(model, x, by_tensor, target=t, metrics=[metric])
    b = xattr.evaluate(model, x.numpy(), by_tensor[:, 0].numpy(), target=t.numpy(), metrics=[metric])
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns[:4]) == ["id", "target", "prob", "top1"] and len(a) == 3
    direct = metric(model.net, x, t, by_tensor)  # the metric object itself, on the same tensors
    np.testing.assert_allclose(a["insertion_deletion/insertion"], direct.scores["insertion"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.attrs["curves"]["insertion_deletion/deletion"], direct.curves["deletion"].numpy())
    table = xattr.summary_table({"grad_cam": a}, ["insertion_deletion/insertion"], sem=True)
    assert table.loc["grad_cam", "insertion_deletion/insertion"] == pytest.approx(a["insertion_deletion/insertion"].mean())


@pytest.mark.filterwarnings("ignore:feature statistics from only")
def test_fit_reads_a_loader_tuples_tensors_or_a_file(tmp_path):
    """IBA's statistics are the mean/std of the layer's output over the data, however it is handed over."""
    torch.manual_seed(0)
    model = xattr.load_model(TinyCNN(num_classes=4), layers={"bottleneck": "conv2"}, preprocess={"size": 16})
    x = torch.randn(24, 3, 16, 16)
    iba = xattr.method("iba", model, steps=2, copies=2, n_samples=24)
    with pytest.raises(ValueError, match="call fit"):
        iba.attribute(x[:2], torch.tensor([0, 1]))
    xattr.fit(iba, x)
    with torch.no_grad():  # the closed form: per-unit mean and std of conv2's output over the 24 images
        feats = []
        h = model.net.features[2].register_forward_hook(lambda m, i, o: feats.append(o))  # conv2
        model.net(x)
        h.remove()
    torch.testing.assert_close(iba.stats["conv2"].mean, feats[0].mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(iba.stats["conv2"].std, feats[0].std(0), rtol=1e-3, atol=1e-4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(24)), batch_size=5)
    by_loader = xattr.fit(xattr.method("iba", model, steps=2, copies=2, n_samples=24), loader, cache_dir=tmp_path)
    torch.testing.assert_close(by_loader.stats["conv2"].mean, iba.stats["conv2"].mean)
    files = list((tmp_path / "iba_stats").glob("*.pt"))
    assert len(files) == 1
    by_file = xattr.fit(xattr.method("iba", model, steps=2, copies=2), files[0])
    torch.testing.assert_close(by_file.stats["conv2"].std, iba.stats["conv2"].std)
    maps = by_file.attribute(x[:2], torch.tensor([0, 1]))
    assert maps.shape == (2, 1, 16, 16) and torch.isfinite(maps).all()
    assert xattr.fit(xattr.method("gradient", model), x) is not None  # nothing to fit: returned as is
    # InputIBA keeps its statistics in its feature IBA: the same file fits it (was an AttributeError)
    input_iba = xattr.fit(xattr.method("input_iba", model, layer="conv2"), files[0])
    torch.testing.assert_close(input_iba.feature_iba.stats["conv2"].std, iba.stats["conv2"].std)


# --------------------------------------------------------------------------------------------- run folders
def test_open_run_reads_the_run_as_the_store_does(saved_run):
    from xattr.core.store import RunStore

    run = xattr.open_run(saved_run)
    store = RunStore(saved_run)
    assert run.method_name == "random" and run.config.model.name == "custom"
    assert set(run.maps) == set(store.heatmaps()) == set(run.per_image["id"]) and len(run.maps) == 2
    assert "insertion_deletion/insertion" in run.per_image and set(run.summary["score"]) >= {"insertion_deletion/insertion"}
    assert run.curves["insertion_deletion/insertion"].shape[0] == 2
    assert "2 images" not in repr(run) and "finished batches" in repr(run)


# --------------------------------------------------------------------------------------------- the quickstart
def test_the_quickstart_runs_and_draws(tmp_path):
    """examples/quickstart.py as a new user runs it (real EfficientNet-Lite0, shipped photos and statistics)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MPLBACKEND": "Agg"}
    work = tmp_path / "work"
    work.mkdir()
    (work / "assets").symlink_to(REPO / "assets")
    out = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py")], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (work / "outputs/quickstart/quickstart.png").stat().st_size > 10_000
    table = pd.read_csv(work / "outputs/quickstart/quickstart.csv", index_col=0)
    assert list(table.index) == ["IBA", "Grad-CAM", "Integrated Gradients"]
    assert table.notna().all().all() and ((table >= 0) & (table <= 1)).all().all()
    # the real network: IBA's insertion beats its deletion on these photos (maps that find the object)
    assert (table["insertion_deletion/insertion"] > table["insertion_deletion/deletion"]).all()
    assert out.stderr.strip() == "", out.stderr[-2000:]  # a quiet console


def test_the_readme_example_uses_only_public_names_and_its_links_exist():
    import ast
    import re

    readme = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    used = {n.attr for n in ast.walk(ast.parse(block)) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "xattr"}
    assert used and used <= set(xattr.__all__), used - set(xattr.__all__)
    assert len(readme.split("## Read on")[0].splitlines()) < 60  # the first screen
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (REPO / link).exists(), link
    for page in (REPO / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / link).exists(), (page.name, link)


@pytest.mark.filterwarnings("ignore:feature statistics from only")
def test_evaluate_reruns_the_method_for_the_sanity_check():
    """The cascading randomisation rebuilds the method from its hparams on each randomised copy (refitted on
    fit_data): the first step (top layer randomised) of a deterministic method gives an SSIM < 1, and the
    same call without fit_data for IBA is one error."""
    torch.manual_seed(0)
    model = xattr.load_model(TinyCNN(num_classes=4), layers={"cam": "conv3", "bottleneck": "conv2"},
                             preprocess={"size": 16})
    x = torch.randn(2, 3, 16, 16)
    gc = xattr.method("grad_cam", model)
    maps = gc.attribute(x, torch.tensor([0, 1]))
    df = xattr.evaluate(model, x, maps, target=[0, 1], metrics=["sanity_check"], method=gc)
    ssim = [c for c in df.columns if c.startswith("sanity_check/ssim")]
    assert ssim and df[ssim].notna().all().all() and (df[ssim].to_numpy() < 0.999).any()
    iba = xattr.fit(xattr.method("iba", model, steps=2, copies=2, n_samples=8), x.repeat(4, 1, 1, 1))
    with pytest.raises(ValueError, match="pass fit_data="):
        xattr.evaluate(model, x, iba.attribute(x, torch.tensor([0, 1])), target=[0, 1], metrics=["sanity_check"],
                       method=iba)


def test_a_text_model_gets_the_methods_text_forms_as_on_the_cli():
    from xattr.methods.text import text_form

    lstm = xattr.load_model("imdb_lstm")  # the shipped checkpoint
    for name in ("integrated_gradients", "gradient", "iba"):
        api = xattr.method(name, lstm)
        cfg = compose_cfg([f"method={name}", "model=imdb_lstm", "dataset=imdb"])
        cli = text_form(build(cfg.method), cfg.model.layers.embedding)(model=lstm.net)
        assert type(api) is type(cli) and type(api).__name__.startswith("Text")
        assert {k: v for k, v in api.hparams.items() if k != "dataset"} == {k: v for k, v in cli.hparams.items() if k != "dataset"}
    with pytest.raises(ValueError, match="'grad_cam' has no text form; valid choices: "):
        xattr.method("grad_cam", lstm)
    tokens = torch.tensor([[5, 6, 7, 8, 0, 0]])
    scores = xattr.explain(lstm, tokens, target=1, method="gradient").maps
    assert scores.shape == (1, 6) and (scores[0, 4:] == 0).all()


def test_a_run_still_going_is_summarised_over_its_finished_images(saved_run, tmp_path):
    """A long run read from a notebook before it ends: ``summary`` over the images finished so far, each
    metric summarising its own scores as the run's report does (here: the full run's own summary, rebuilt from
    the per-batch files alone; and on one of its two images, that image's scores)."""
    import shutil

    from xattr.core.store import RunStore

    going = tmp_path / "going"
    shutil.copytree(saved_run, going)
    for name in ("summary.csv", "summary.md", "per_image.parquet", "per_image.csv"):
        (going / name).unlink(missing_ok=True)
    assert len(RunStore(going).summary()) == 0  # what the store alone has: no report yet
    full, interim = xattr.open_run(saved_run).summary, xattr.open_run(going).summary
    pd.testing.assert_frame_equal(interim.set_index("score").sort_index(), full.set_index("score").sort_index(),
                                  check_dtype=False)
    first = sorted((going / "per_image").glob("*.parquet"))
    rows = pd.read_parquet(first[0])
    if len(rows) == 2:  # one batch of two: keep its first image only
        rows.iloc[:1].to_parquet(first[0])
    one = xattr.open_run(going).summary.set_index("score")
    assert one.loc["insertion_deletion/prob", "n"] == 1
    assert one.loc["insertion_deletion/prob", "mean"] == pytest.approx(float(rows["insertion_deletion/prob"].iloc[0]))
