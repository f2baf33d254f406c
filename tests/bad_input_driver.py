"""Call an entry point's ``main(argv)`` once per row, in this process, each row in a fresh folder: the bad-input
rows of tests/test_bad_input.py, of all six entry points, in ONE interpreter (the imports are paid once).

``python tests/bad_input_driver.py <rows.json>``: ``rows.json`` is a list of ``{"entry": run | train | generate
| demo | table | report, "argv": [...], "setup": name or null}``; row ``k`` runs in ``./row<k>`` (made here), ``{cwd}``
in an argument is that folder. Prints one
JSON line per row on stdout: ``{"rc": exit code or "traceback: <last line>", "err": [stderr lines], "left":
[paths left under the row's folder that the row's set-up did not make], "cwd": the row's folder}``. Each row's stderr is caught at the file-descriptor level, so
warnings, logging and a traceback all count as lines.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def setup(name: str | None, cwd: Path) -> None:
    """What a row needs on disk before it runs (made before the row's folder is listed)."""
    import numpy as np

    if name is None:
        return
    if "+" in name:  # several set-ups
        for part in name.split("+"):
            setup(part, cwd)
        return
    if name == "empty_dir":
        (cwd / "empty").mkdir()
    elif name == "a_file":
        (cwd / "a_file").write_text("not a folder\n")
    elif name == "corrupt_pth":
        (cwd / "w.pth").write_bytes(b"\x80\x02not a pickle at all")
        (cwd / "empty.pth").write_bytes(b"")
    elif name == "latin1_imdb":
        import gzip

        d = cwd / "imdb"
        d.mkdir()
        with gzip.open(d / "test.jsonl.gz", "wb") as f:
            f.write('{"text": "caf\u00e9 tr\u00e8s bien", "label": 1}\n'.encode("latin-1"))
    elif name.startswith("saved_run:"):  # a finished run folder made by another model/dataset (config + maps)
        model, dataset, limit = name.split(":", 1)[1].split(",")
        run = cwd / "saved"
        (run / "heatmaps").mkdir(parents=True)
        (run / "config.yaml").write_text(
            f"method_name: gradient\nmodel:\n  name: {model}\n  weights: imagenet\n"
            f"dataset:\n  name: {dataset}\n  limit: {limit}\n")
        np.savez(run / "heatmaps" / "b0000000-2.npz", maps=np.zeros((2, 4, 4), np.float16),
                 id=np.array(["a", "b"]), index=np.arange(2), label=np.zeros(2, np.int64),
                 target=np.zeros(2, np.int64))
    elif name == "imagenet_root":  # one boxed photo in the ImageNet layout (images/ + annotations/)
        from PIL import Image

        from xattr.core.labels import imagenet_wnids

        wnid = imagenet_wnids()[0]
        for sub in ("images", "annotations"):
            (cwd / "imagenet" / sub / "attribution" / wnid).mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(cwd / "imagenet" / "images" / "attribution" / wnid / "a.JPEG")
        (cwd / "imagenet" / "annotations" / "attribution" / wnid / "a.xml").write_text(
            "<annotation><size><width>64</width><height>64</height><depth>3</depth></size><object><name>x</name>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    elif name in ("finished_run", "planted_run"):  # a finished run folder; planted: a foreign _target_
        import pandas as pd

        run = cwd / "run"
        run.mkdir()
        # planted: a callable Hydra's own blocklist lets through (it stops os.system), copying a file if called
        metric = (f"metric:\n  evil:\n    _target_: shutil.copyfile\n    src: {run}/config.yaml\n"
                  f"    dst: {cwd}/PWNED\n" if name == "planted_run" else "metric: {}\n")
        (run / "config.yaml").write_text(f"method_name: gradient\nmodel:\n  name: custom\n{metric}")
        pd.DataFrame({"id": ["a"], "index": [0], "label": [0], "target": [0], "prob": [0.5], "top1": [0],
                      "top1_prob": [0.5]}).to_parquet(run / "per_image.parquet")
    else:
        raise SystemExit(f"unknown setup {name!r}")


def one_row(main, argv: list[str], setup_name: str | None, cwd: Path) -> dict:
    cwd.mkdir(parents=True)
    os.chdir(cwd)
    setup(setup_name, cwd)
    before = _files(cwd)
    argv = [a.replace("{cwd}", str(cwd)) for a in argv]
    err_path = cwd.parent / f"{cwd.name}.stderr"  # beside the row's folder: not one of its files
    sys.stdout.flush()
    sys.stderr.flush()
    saved, saved_out = os.dup(2), os.dup(1)
    with open(err_path, "w") as f, open(os.devnull, "w") as null:
        os.dup2(f.fileno(), 2)
        os.dup2(null.fileno(), 1)
    try:
        try:
            rc: int | str = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 - a traceback is what the row reports
            traceback.print_exc()
            rc = f"traceback: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.dup2(saved_out, 1)
        os.close(saved)
        os.close(saved_out)
    err = [ln for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
    left = sorted(_files(cwd) - before)
    return {"rc": rc, "err": err, "left": left, "cwd": str(cwd)}


def main() -> None:
    rows = json.loads(Path(sys.argv[1]).read_text())
    out, base = sys.stdout, Path.cwd()
    for k, row in enumerate(rows):
        t0 = time.perf_counter()
        main_fn = importlib.import_module(f"xattr.{row['entry']}").main
        res = one_row(main_fn, row["argv"], row.get("setup"), base / f"row{k}")
        res["seconds"] = round(time.perf_counter() - t0, 2)
        out.write(json.dumps(res) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
