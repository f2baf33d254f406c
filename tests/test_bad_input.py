"""Every bad input of every entry point, as a new user types it: one line on stderr naming the key (or file)
and what is valid, exit 2, nothing left in the folder it ran in (issue 27's table, and the older rows of
tests/test_first_hour.py and tests/test_cli_shell.py).

One subprocess for all of them (``tests/bad_input_driver.py`` calls each entry point's ``main(argv)`` once per
row, each row in a fresh folder, stderr caught at the file-descriptor level): the interpreter and the imports
(~10 s here) are paid once, not once per entry point; a failure names the entry point and the row. The
real exit code of ``python -m xattr.<name>`` (``raise SystemExit(main())``) is checked by
tests/test_cli_shell.py; a row that works by mistake runs a tiny model on one photo, so it fails fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RUN = ["model=custom", "dataset=samples", "target=top1", "trainer=cpu", "logger=none", "metric=[]", "dataset.limit=1",
       "trainer.enable_progress_bar=false"]
TRAIN = ["recipe=synthetic_cxr", "dataset.n_train=40", "dataset.n_test=20", "dataset.size=32", "batch_size=10",
         "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
         "logger=none", "trainer.max_epochs=1"]
GENERATE = ["model=custom", "axioms=cpu", "device=cpu", "batch_size=1", "axioms.n=1", "axioms.out={cwd}/outputs/axioms"]
DEMO = ["demo.out_dir={cwd}/outputs/demo", "dataset.limit=1"]
IMDB = ["model=imdb_lstm", "dataset=imdb", "dataset.root={cwd}/imdb", "trainer=cpu", "logger=none", "metric=[]",
        "target=top1", "dataset.limit=1"]

# (argv, set-up of the row's folder (tests/bad_input_driver.py), what the one line must say)
ROWS: dict[str, list[tuple[list[str], str | None, str]]] = {
    "run": [
        ([*RUN, "batch_size=abc"], None, "error: bad batch_size 'abc'; valid choices: an integer >= 1"),
        ([*RUN, "model.weights={cwd}/w.pth"], "corrupt_pth", "error: bad model.weights '{cwd}/w.pth': cannot load"),
        ([*RUN, "model.weights={cwd}/empty.pth"], "corrupt_pth", "error: bad model.weights '{cwd}/empty.pth'"),
        ([*RUN, "model=mobilenet_v2", "model.weights={cwd}/w.pth"], "corrupt_pth",
         "error: bad model.weights '{cwd}/w.pth': cannot load it as a state dict (UnpicklingError); valid choices: "),
        ([*RUN, "dataset.root={cwd}/empty"], "empty_dir", "error: bad dataset.root '{cwd}/empty': it holds no photos"),
        (IMDB, "latin1_imdb", "error: cannot read IMDB reviews {cwd}/imdb/test.jsonl.gz (line 1: 'utf-8' codec"),
        ([*RUN, "method=saved", "method.run_dir={cwd}/saved"], "saved_run:efficientnet_lite0,samples,null",
         "error: bad method.run_dir '{cwd}/saved': its maps were made with model.name='efficientnet_lite0' (here "
         "'custom'); valid choices: the same settings as that run, or method.check_source=false"),
        ([*RUN, "method=saved", "method.run_dir={cwd}/saved"], "saved_run:custom,imagenet,null",
         "error: bad method.run_dir '{cwd}/saved': its maps were made with dataset.name='imagenet' (here 'samples')"),
        # method.check_source=false: scored knowingly (here its maps are of other photos: the next line says so)
        ([*RUN, "method=saved", "method.run_dir={cwd}/saved", "method.check_source=false"],
         "saved_run:efficientnet_lite0,samples,null",
         "error: image 'bird' has no saved map in {cwd}/saved; valid choices: the 2 images of that run"),
        ([*RUN, "hydra.run.dir={cwd}/a_file"], "a_file",
         "error: cannot make folder {cwd}/a_file: a file is in the way; valid choices: a writable folder"),
        ([*RUN, "+method.betta=10"], None, "error: unknown key 'method.betta'; valid choices: reduce, abs"),
        ([*RUN, "method.betta=10"], None, "error: unknown key 'method.betta'; valid choices: abs, reduce (or +method.betta=... to add"),
        ([*RUN, "dataset.limit=0"], None, "error: bad dataset.limit 0; valid choices: an integer >= 1"),
        ([*RUN, "dataset=imagenet", "dataset.root={cwd}/imagenet", "dataset.max_box_coverage=abc"], "imagenet_root",
         "error: bad dataset.max_box_coverage 'abc'; valid choices: a share in (0, 1], or null for every image"),
        ([*RUN, "method=iba", "method.beta=abc"], None, "error: bad method.beta 'abc'; valid choices: a number"),
        ([*RUN, "method=iba", "method.steps=0"], None, "error: bad method.steps 0; valid choices: "),
        ([*RUN, "threads=0"], None, "error: bad threads 0; valid choices: "),
        *([] if torch.cuda.is_available() else
          [([*RUN, "trainer=ddp"], None, "error: bad trainer.accelerator 'gpu': this machine has no GPU")]),
    ],
    "train": [
        ([*TRAIN, "data.limit=-5"], None, "error: bad data.limit -5; valid choices: an integer >= 1"),
        ([*TRAIN, "trainer.max_epochs=0"], None, "error: bad trainer.max_epochs 0; valid choices: an integer >= 1"),
        ([*TRAIN, "ckpt_path={cwd}/w.pth"], "corrupt_pth", "error: bad ckpt_path '{cwd}/w.pth': cannot load it as a"),
        ([*TRAIN, "optimizer.lr=-0.1"], None, "error: bad optimizer.lr -0.1; valid choices: a number > 0"),
        ([*TRAIN, "batch_size=0"], None, "error: bad batch_size 0; valid choices: an integer >= 1"),
        ([*TRAIN, "ckpt_path=last"], None, "error: missing checkpoint to resume from: put it at {cwd}/outputs/train/"),
        (["recipe=roar", "roar.percent=150", "roar.out_dir={cwd}/outputs/roar", "trainer.accelerator=cpu",
          "logger=none"], None, "error: bad roar.percent 150.0; valid choices: a number in [0, 100]"),
        ([*TRAIN, "monitor=val_accc"], None, "error: unknown monitor 'val_accc'; valid choices: val_acc, val_loss"),
    ],
    "generate": [
        ([*GENERATE, "batch_size=-1"], None, "error: bad batch_size -1; valid choices: an integer >= 1"),
        ([*GENERATE, "axioms.out={cwd}/a_file"], "a_file", "error: cannot make folder {cwd}/a_file: a file is in the way"),
        ([*GENERATE, "axioms.max_iters=2", "axioms.warmup=1", "axioms.max_restarts=0"], None,
         "error: axioms sample 0: no solution within axioms.max_iters=2 steps and axioms.max_restarts=0 (0 samples "
         "finished and kept); valid choices: a larger axioms.max_iters"),
        ([*GENERATE, "axioms.n=0"], None, "error: bad axioms.n 0; valid choices: an integer >= 1"),
    ],
    "demo": [
        ([*DEMO, "batch_size=abc"], None, "error: bad batch_size 'abc'; valid choices: an integer >= 1"),
        ([*DEMO, "dataset.limitt=2"], None, "error: unknown key 'dataset.limitt'; valid choices: attribution, "),
    ],
    "table": [
        (["iba_t1_beta", "{cwd}/nope"], None, "error: bad runs path '{cwd}/nope': it does not exist; valid choices"),
        (["iba_t1_beta", "{cwd}/empty"], "empty_dir",
         "error: no finished runs of python -m xattr.run under '{cwd}/empty'; valid choices: "),
        (["iba_t1_beta", "{cwd}/a_file"], "a_file", "error: bad runs path '{cwd}/a_file': it is a file; valid"),
        (["iba_t1_beta", "{cwd}/run", "--out", "{cwd}/a_file"], "finished_run+a_file",
         "error: cannot make folder {cwd}/a_file: a file is in the way; valid choices: a writable folder (--out DIR)"),
        (["pathways_t1_roar", "{cwd}/empty"], "empty_dir", "error: no ROAR units of python -m xattr.train recipe=roar"),
        (["iba_t9"], None, "error: unknown table 'iba_t9'; valid choices: axioms_t1"),
        # a foreign run folder's config names shutil.copyfile (Hydra's blocklist would stop os.system, not this):
        # refused before anything runs (no PWNED file left)
        (["iba_t1_beta", "{cwd}/run"], "planted_run",
         "error: refused metric.evil _target_ 'shutil.copyfile' in the config of {cwd}/run: it builds only xattr's own"),
    ],
    "report": [
        (["{cwd}/nope"], None, "error: bad runs path '{cwd}/nope': it does not exist; valid choices"),
        (["{cwd}/empty"], "empty_dir", "error: no finished runs of python -m xattr.run under '{cwd}/empty'"),
        (["{cwd}/run", "--out", "{cwd}/a_file"], "finished_run+a_file",
         "error: cannot make folder {cwd}/a_file: a file is in the way; valid choices: a writable folder (--out DIR)"),
    ],
}


@pytest.fixture(scope="module")
def driven(tmp_path_factory) -> dict[str, list]:
    """Every row of every entry point run once, in one subprocess (the driver calls each entry point's
    ``main(argv)`` in a fresh folder; one interpreter's imports instead of one per entry point):
    entry point -> [(argv, expected line, result)]. The tests below share one xdist worker
    (``xdist_group``; ``make test`` runs ``--dist loadgroup``), so the subprocess runs once."""
    tmp_path = tmp_path_factory.mktemp("bad_input")
    rows = [(entry, argv, setup, said) for entry, entry_rows in ROWS.items() for argv, setup, said in entry_rows]
    spec = tmp_path / "rows.json"
    spec.write_text(json.dumps([{"entry": entry, "argv": argv, "setup": setup} for entry, argv, setup, _ in rows]))
    env = {**os.environ, "XATTR_ROOT": str(REPO), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}",
           "OMP_NUM_THREADS": "1", "XATTR_CACHE": str(tmp_path / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    p = subprocess.run([sys.executable, str(REPO / "tests" / "bad_input_driver.py"), str(spec)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(results) == len(rows), p.stderr[-3000:]
    out: dict[str, list] = {entry: [] for entry in ROWS}
    for (entry, argv, _, said), res in zip(rows, results):
        out[entry].append((argv, said, res))
    return out


@pytest.mark.xdist_group("bad_input")
@pytest.mark.parametrize("entry", list(ROWS))
def test_every_bad_input_of_every_entry_point_is_one_line_exit_2_and_leaves_nothing(entry, driven):
    wrong = []
    for argv, said, res in driven[entry]:
        want = said.replace("{cwd}", res["cwd"])
        ok = (res["rc"] == 2 and len(res["err"]) == 1 and res["err"][0].startswith(want) and res["left"] == [])
        if not ok:
            wrong.append(f"{entry} {' '.join(argv[-2:])}: rc {res['rc']}, left {res['left'][:3]}, "
                         f"stderr {res['err'][-3:]}")
    assert driven[entry] and not wrong, "\n".join(wrong)
