"""Every config group composes and builds on CPU; bad input stops with one line naming the valid choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import compose_cfg
from xattr.config import GROUPS, build, check_overrides, group_options
from xattr.engine.targets import parse_target
from xattr.errors import XattrConfigError
from xattr.models import load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mobilenet():
    return load_model("mobilenet_v2", "random")


@pytest.mark.parametrize("group", ["model", "dataset", "method", "metric", "logger", "trainer", "experiment"])
def test_every_option_composes(group):
    opts = group_options(group)
    assert opts, group
    for opt in opts:
        cfg = compose_cfg([f"{group}={opt}"])
        assert cfg.model.name and cfg.dataset.name


@pytest.mark.parametrize("opt", group_options("model"))
def test_model_configs_build_and_default_layers_resolve(opt):
    from xattr.core.layers import resolve_layer

    hf = ["model.path=${paths.root}/assets/text/imdb_transformer"] if opt == "hf" else []  # a folder to read
    cfg = compose_cfg([f"model={opt}", "model.weights=random", *hf])
    zoo = load_model(cfg.model.name, cfg.model.weights, spec=cfg.model)
    assert "bottleneck" in cfg.model.layers
    for role in ("bottleneck", "cam", "embedding"):
        if role in cfg.model.layers:
            resolve_layer(zoo.net, cfg.model.layers[role])
    for name in list(cfg.model.layers.get("readout", [])) + list(cfg.model.layers.get("multilayer", [])):
        resolve_layer(zoo.net, name)


@pytest.mark.parametrize("opt", group_options("method"))
def test_method_configs_build_on_mobilenet(opt, mobilenet, tmp_path):
    text = "text" in opt
    transformer = opt in ("attention_rollout", "chefer")  # need attention maps: the CIFAR-10 ViT (random weights)
    extra = ["model=imdb_lstm"] if text else ["model=cifar_vit"] if transformer else []
    if opt == "saved":  # maps of an earlier run: needs its folder
        (tmp_path / "heatmaps").mkdir()
        extra = [f"method.run_dir={tmp_path}"]
    cfg = compose_cfg([f"method={opt}", "model.weights=random", *extra])
    net = load_model("imdb_lstm", "random").net if text else mobilenet.net
    if transformer:
        net = load_model(cfg.model.name, cfg.model.weights, spec=cfg.model).net
    method = build(cfg.method)(model=net)
    assert hasattr(method, "attribute")


@pytest.mark.parametrize("opt", group_options("metric"))
def test_metric_configs_build(opt):
    cfg = compose_cfg([f"metric={opt}"])
    (name, node), = cfg.metric.items()
    assert name == opt
    assert callable(instantiate(node))


def test_metric_list_composes_several():
    cfg = compose_cfg(["metric=[insertion_deletion,bbox_ratio]"])
    assert set(cfg.metric) == {"insertion_deletion", "bbox_ratio"}


@pytest.mark.parametrize("opt", [o for o in group_options("dataset") if o != "axioms"])  # axioms: generated, tests/test_axioms_*
def test_dataset_configs_build(opt, request, tmp_path):
    if opt in ("nih_chestxray8", "brixia"):  # no chest X-ray here: the configs built on fixture files
        return _cxr_config_builds(opt, tmp_path)
    shared_data = request.getfixturevalue("shared_data")
    model = ["model=imdb_lstm"] if opt in ("imdb", "sst2") else []
    cfg = compose_cfg([f"dataset={opt}", "dataset.limit=2", f"paths.data_dir={shared_data}", *model])
    ds = instantiate(cfg.dataset.attribution, preprocess=load_model("cifar_resnet20", "random").preprocess
                     if opt == "cifar10" else load_model("mobilenet_v2", "random").preprocess)
    assert len(ds) == 2


def _cxr_config_builds(opt, root):
    """The composed NIH / BrixIA configs build their four splits on tests/test_cxr_data.py's fixture files
    (official layouts, written into ``root``); the attribution rows are the fixture's, by hand."""
    from tests.test_cxr_data import write_brixia, write_nih

    extra = ["dataset.images=png", "dataset.image_ext=.png"] if opt == "brixia" else []
    (write_nih if opt == "nih_chestxray8" else write_brixia)(root)
    cfg = compose_cfg([f"dataset={opt}", "dataset.limit=2", f"dataset.root={root}", *extra])
    pre = load_model("mobilenet_v2", "random").preprocess
    ds = {k: instantiate(cfg.dataset[k], preprocess=pre) for k in ("attribution", "estimation", "train", "test")}
    if opt == "nih_chestxray8":  # rows (image, boxed finding), limit 2 of 3; train / test lists of 2 / 1 images
        assert [(ds["attribution"][i]["id"], ds["attribution"][i]["label"]) for i in range(len(ds["attribution"]))] \
            == [("00000001_000_Cardiomegaly", 1), ("00000003_001_Mass", 4)]
        assert (len(ds["train"]), len(ds["test"])) == (2, 1)
    else:  # ConsensusTestset: b (score 3 + 3 = 6) is the test split, a the training split
        assert len(ds["attribution"]) == 1 and float(ds["attribution"][0]["label"]) == 6.0
        assert ds["attribution"][0]["zones"].tolist() == [0, 0, 0, 0, 3, 3]
        assert (len(ds["train"]), len(ds["test"]), len(ds["estimation"])) == (1, 1, 1)
    assert ds["attribution"][0]["x"].shape == (3, 224, 224)


@pytest.mark.parametrize("arg,msg", [
    ("model=vgg61", "unknown model 'vgg61'; valid choices: cifar_resnet20"),
    ("method=gradcam", "unknown method 'gradcam'; valid choices:"),
    ("metric=[insertion_deletion,auc]", "unknown metric 'auc'; valid choices:"),
    ("dataset=imagenet21k", "unknown dataset 'imagenet21k'; valid choices:"),
    ("row=gradient,saliencyy", "unknown row 'saliencyy'; valid choices: cxr_grad_cam"),
    ("half=imbd", "unknown half 'imbd'; valid choices: imdb"),
])
def test_unknown_group_option_is_one_line(arg, msg, capsys):
    with pytest.raises(SystemExit):
        check_overrides([arg])
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


def test_unknown_group_option_from_the_command_line():
    p = subprocess.run([sys.executable, "-m", "xattr.run", "model=vgg61"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: unknown model 'vgg61'; valid choices:")


@pytest.mark.parametrize("spec,msg", [(1000, "class index 1000 out of range; valid choices: 0..999"),
                                      ("first", "unknown target 'first'; valid choices: label, top1")])
def test_bad_target(spec, msg):
    with pytest.raises(XattrConfigError, match=msg):
        parse_target(spec, 1000)


def test_bad_class_index_in_attribute(mobilenet):
    from xattr.methods.baselines.gradient import Gradient

    with pytest.raises(ValueError, match="class index 1000 out of range; valid choices: 0..999"):
        Gradient(mobilenet.net).attribute(torch.zeros(1, 3, 32, 32), torch.tensor([1000]))


def test_missing_data_from_the_command_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "xattr.run", f"paths.data_dir={tmp_path}", "model.weights=random",
                        f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: missing ImageNet 'attribution' images: put it at")


def test_bad_layer_in_method_config(mobilenet):
    cfg = compose_cfg(["method=grad_cam", "method.layer=conv9"])
    with pytest.raises(XattrConfigError, match="unknown layer 'conv9'; valid choices: stem, block_0"):
        build(cfg.method)(model=mobilenet.net)


def test_missing_data_root(tmp_path):
    cfg = compose_cfg([f"paths.data_dir={tmp_path}"])
    with pytest.raises(XattrConfigError, match=r"missing ImageNet 'attribution' images: put it at .*imagenet"):
        build(cfg.dataset.attribution, preprocess=None)


#: experiments that are not a published table (their output is a report, not a table row)
NOT_TABLES = ("meta_eval",)


@pytest.mark.parametrize("exp", [e for e in group_options("experiment") if e != "demo"])
def test_experiment_sweeps_name_existing_methods_and_tables(exp):
    from hydra import compose, initialize_config_dir

    from xattr.config import CONF_DIR
    from xattr.tables import load_published

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"experiment={exp}"], return_hydra_config=True)
    assert cfg.name == exp and (exp in load_published() or exp in NOT_TABLES)
    params = cfg.hydra.sweeper.get("params") or {}
    for m in str(params.get("method", "")).split(","):
        if m:
            assert m in group_options("method"), (exp, m)
    for metric in cfg.metric:
        assert metric in group_options("metric")
    for key, value in params.items():  # swept config groups (row: a,b,...) name existing options
        group = str(key).lstrip("+")
        if group in GROUPS or "/" in group:
            assert group in GROUPS, (exp, key)
            for v in str(value).split(","):
                assert v in group_options(group), (exp, key, v)


def test_row_presets_are_their_own_groups_not_experiments():
    """A published row (``conf/row/``) or a figure half (``conf/half/``) is picked beside an experiment
    (``experiment=iba_t2_bbox row=gradient``); ``conf/experiment/`` holds only the tables' experiments."""
    from xattr.config import CONF_DIR

    assert not [p for p in (CONF_DIR / "experiment").iterdir() if p.is_dir()]
    assert len(group_options("row")) >= 33 and group_options("half") == ["imdb"]
    for group in ("row", "half"):
        for opt in group_options(group):
            assert (CONF_DIR / group / f"{opt}.yaml").read_text().startswith("# @package _global_"), (group, opt)
    assert compose_cfg(["experiment=cxr_t1_iou", "row=cxr_iba"]).method.loss == "bce"
    cfg = compose_cfg(["experiment=inputiba_f4_sensitivity_n", "half=imdb"])
    assert cfg.model.name == "imdb_lstm" and cfg.dataset.name == "imdb"



ROWS_DIR = REPO / "conf" / "row"


def _compose_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from xattr.config import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("exp", ["iba_t2_bbox", "iba_t2_degradation", "inputiba_t2_ehr"])
def test_sweep_rows_are_the_published_rows(exp, mobilenet):
    """Every swept row config (conf/row/) exists, builds on mobilenet and lands in
    exactly one row of the published table; every published row with an xattr method is swept
    (PatternAttribution has none)."""
    from omegaconf import open_dict

    from xattr.tables import load_published
    from xattr.tables.match import matches as _matches

    params = _compose_hydra([f"experiment={exp}"]).hydra.sweeper.get("params") or {}
    rows = [r for r in str(params.get("row", "")).split(",") if r]
    assert rows and len(rows) == len(set(rows))
    spec = load_published()[exp]
    hit = set()
    for row in rows:
        assert (ROWS_DIR / f"{row}.yaml").is_file(), row
        overrides = [f"experiment={exp}", f"row={row}"]
        choice = _compose_hydra(overrides).hydra.runtime.choices.method
        cfg = compose_cfg([*overrides, "model.weights=random"])
        with open_dict(cfg):
            cfg.method_name = choice  # what the run records (${hydra:runtime.choices.method})
        matched = [r["name"] for r in spec["rows"] if _matches(cfg, r.get("match"))]
        assert len(matched) == 1, (row, matched)
        hit.add(matched[0])
        assert hasattr(build(cfg.method)(model=mobilenet.net), "attribute")
    missing = {r["name"] for r in spec["rows"]} - hit
    assert missing <= {"PatternAttribution"}, missing


def test_gradient_and_saliency_rows_differ():
    grad = compose_cfg(["experiment=iba_t2_bbox", "row=gradient"]).method
    sal = compose_cfg(["experiment=iba_t2_bbox", "row=saliency"]).method
    assert (grad.abs, grad.reduce) == (False, "sum") and (sal.abs, sal.reduce) == (True, "max_abs")


def test_the_extremal_perturbation_row_takes_the_area_inputibas_code_passes():
    """InputIBA's tables run TorchRay with ``areas=[0.3]`` (its tools/train_baseline.py), the method alone its
    appendix's 10%."""
    assert list(compose_cfg(["experiment=inputiba_t2_ehr", "row=extremal_perturbation"]).method.areas) == [0.3]
    assert list(compose_cfg(["method=extremal_perturbation"]).method.areas) == [0.1]


@pytest.mark.parametrize("value,ok", [("all", True), (50, True), ("most", False)])
def test_number_options_that_take_a_word(value, ok):
    """``points: all`` (the full insertion/deletion curve) passes the pre-run checks; another word names the
    valid choices, the word included."""
    from xattr.config import check_values

    cfg = compose_cfg([f"metric.insertion_deletion.points={value}"])
    if ok:
        check_values(cfg)
    else:
        with pytest.raises(XattrConfigError, match=r"bad metric.insertion_deletion.points 'most'; valid choices: "
                                                   r"all, or an integer >= 2"):
            check_values(cfg)


@pytest.mark.parametrize("argv,config,msg", [
    (["method=iba", "method.betta=10"], "config", "unknown key 'method.betta'; valid choices: "),
    (["recipe=roar", "roar.percnt=50"], "train", "unknown key 'roar.percnt'; valid choices: "),
])
def test_an_unknown_key_is_one_line_naming_the_keys_that_exist(argv, config, msg, capsys):
    with pytest.raises(SystemExit) as e:
        check_overrides(argv, config)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {msg}") and len(err.splitlines()) == 1
    valid = err.split("valid choices: ")[1]
    assert ("beta" in valid.split(", ")) if "betta" in msg else ("percent" in valid.split(", "))
    assert "_target_" not in valid


def test_known_keys_and_sweeps_pass_the_key_check(capsys):
    """Known keys and sweeps pass silently; the same calls with one key or option misspelt exit 2 (so the
    check is live for these shapes of argument)."""
    assert check_overrides(["method=iba", "method.beta=10", "hydra.run.dir=/tmp/x"]) is None
    assert check_overrides(["method=iba,gradient", "method.whatever=1,2"]) is None  # a sweep: each job composes itself
    assert capsys.readouterr().err == ""
    for bad in (["method=iba", "method.betaa=10", "hydra.run.dir=/tmp/x"], ["method=iba,gradientt", "method.whatever=1,2"]):
        with pytest.raises(SystemExit) as e:
            check_overrides(bad)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "betaa" in err and "gradientt" in err
