"""Every GPU figure in one call (``make bench-gpu``, issue 31): each bench's GPU rows, run one after another
with a time limit each, so the whole call fits a lent machine's minutes (about 8 minutes on one H100-class
GPU; a bench that fails or runs past its limit does not stop the others).

Writes to ``outputs/bench-gpu/`` (``--out``): ``<bench>.md`` (the bench's own table, written as it runs),
``<bench>.err`` and ``<bench>.jsonl`` (its rows, via ``timing.record``), and ``bench-gpu.md``: one Markdown
table of every row (device named; ms per image, GFLOP per image, rate, the limit row and the share of it,
peak memory), then each bench's own table. ``docs/speed.md`` says where the table goes once a device is lent.

    python scripts/bench_gpu.py                      # on the GPU machine (make bench-gpu)
    python scripts/bench_gpu.py --dry-run            # the same calls on the CPU with tiny shapes (a test runs it)
    python scripts/bench_gpu.py --only iba metrics   # a subset
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bench:
    """One bench script, its time limit on the GPU machine, its GPU arguments and its tiny CPU arguments."""

    name: str
    seconds: int
    script: str
    gpu: tuple[str, ...]
    dry: tuple[str, ...]


BENCHES = (
    Bench("iba", 65, "bench_iba.py",
          ("--device", "cuda", "--images", "32", "--batch", "16", "--ref-images", "4", "--skip-authors",
           "--models", "vgg16 conv4_1", "mobilenet_v2 features.6"),
          ("--device", "cpu", "--images", "2", "--batch", "2", "--size", "32", "--steps", "2", "--copies", "2",
           "--ref-images", "1", "--skip-authors", "--models", "mobilenet_v2 features.6", "--threads", "1")),
    Bench("metrics", 60, "bench_metrics.py",
          ("--device", "cuda", "--size", "224", "--images", "64", "--per-step", "224", "--chunk", "auto",
           "--precision", "bf16", "--skip-quantus", "--skip-loop", "--peak-tflops", os.environ.get("PEAK_TFLOPS", "989")),
          ("--device", "cpu", "--size", "16", "--images", "1", "--per-step", "32", "--models", "mobilenet_v2",
           "--skip-quantus", "--skip-loop", "--threads", "1")),
    Bench("eval_metrics", 25, "bench_metrics.py",
          ("--eval-metrics", "--device", "cuda", "--images", "64", "--size", "32", "--only",
           "pointing_game,relevance_mass,relevance_rank,top_k_intersection,sparseness,complexity,"
           "faithfulness_correlation,max_sensitivity,efficient_mprt"),
          ("--eval-metrics", "--device", "cpu", "--images", "2", "--size", "16", "--threads", "1", "--only",
           "sparseness,max_sensitivity")),
    Bench("input_iba", 65, "bench_input_iba.py",
          ("--device", "cuda", "--model", "vgg16", "--size", "224", "--batch", "16", "--epochs", "20", "--steps", "60",
           "--feat-steps", "10", "--single", "1", "--chunks", "auto"),
          ("--device", "cpu", "--model", "tiny", "--size", "16", "--batch", "2", "--epochs", "1", "--steps", "2", "--targets", "10",
           "--feat-steps", "2", "--single", "1", "--copies", "2")),
    Bench("axioms", 35, "bench_axioms.py", ("--prior", "paper", "--batch", "16", "64", "--devices", "cuda"),
          ("--prior", "cpu", "--batch", "2", "--steps", "1", "--devices", "cpu")),
    Bench("baselines", 40, "bench_baselines.py", ("--device", "cuda", "--size", "224", "--images", "16"),
          ("--device", "cpu", "--size", "32", "--images", "1", "--fast", "--models", "mobilenet_v2",
           "--methods", "gradient", "grad_cam")),
    Bench("pathways", 35, "bench_pathways.py",
          ("--devices", "cuda", "--models", "mobilenet_v2", "--size", "224", "--images", "16", "--repeat", "1"),
          ("--devices", "cpu", "--models", "cifar_resnet20", "--images", "2", "--fast", "--threads", "1",
           "--methods", "neuron_mct", "input_intgrad", "--repeat", "1")),
    Bench("text", 25, "bench_text.py", ("--devices", "cuda"),
          ("--devices", "cpu", "--reviews", "2", "--fast", "--methods", "gradient")),
    Bench("roar", 30, "bench_roar.py", ("--steps", "2"), ("--steps", "1", "--batch", "8", "--no-gpu")),
    Bench("memory", 45, "bench_memory.py", ("--device", "cuda", "--images", "16"),
          ("--device", "cpu", "--model", "cifar_resnet20", "--size", "32", "--images", "2", "--what", "iba")),
    Bench("transformers", 55, "bench_transformers.py",
          ("--devices", "cuda", "--images", "4"),
          ("--devices", "cpu", "--models", "cifar_vit", "--images", "1", "--fast", "--methods", "iba", "chefer")),
)


class _Parsed(Exception):
    """Raised by :func:`parsed_args` once a bench's parser accepted its arguments."""


def parsed_args(bench: Bench, gpu: bool = True) -> argparse.Namespace:
    """The bench's own parser applied to its GPU (or dry-run) arguments, in this process and without running
    it: proves on a machine without CUDA that the call ``make bench-gpu`` will make is accepted (a bad option
    exits with argparse's error)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{bench.name}_args", ROOT / "scripts" / bench.script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    spec.loader.exec_module(module)
    original, argv = argparse.ArgumentParser.parse_args, sys.argv

    def stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    try:
        argparse.ArgumentParser.parse_args = stop
        sys.argv = [bench.script, *(bench.gpu if gpu else bench.dry)]
        module.main()
    except _Parsed as done:
        return done.args[0]
    finally:
        argparse.ArgumentParser.parse_args, sys.argv = original, argv
    raise RuntimeError(f"{bench.script} never parsed its arguments")


DRY_SECONDS = 300
"""A dry run's limit per bench: it proves that the calls run (a shared CPU may be slow), not how fast."""


def device_label(dry: bool) -> str:
    if dry:
        return "CPU (--dry-run: tiny shapes, not figures)"
    import torch

    return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, torch {torch.__version__})"


def cell(v: object, digits: int = 1, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{100 * float(v):.0f}%" if pct else f"{float(v):.{digits}f}"


def table(rows: list[dict]) -> list[str]:
    """One Markdown table of every bench's rows (``timing.record``'s keys)."""
    out = ["| bench | model | path | ms / image | GFLOP / image | GFLOP/s | limit GFLOP/s | % of limit | peak MiB |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = r["rate"] / r["limit_rate"] if r.get("rate") and r.get("limit_rate") else None
        path = r.get("path", "") + (f" ({r['metric']})" if r.get("metric") else "")
        unit = f" [{r['unit']}]" if r.get("unit") else ""
        out.append(f"| {r['bench']} | {r.get('model', '')} | {path}{unit} | {cell(r.get('ms_per_image'))} | "
                   f"{cell(r.get('gflop_per_image'), 2)} | {cell(r.get('rate'))} | {cell(r.get('limit_rate'))} | "
                   f"{cell(share, pct=True)} | {cell(r.get('peak_mib'), 0)} |")
    return out


def run(bench: Bench, out: Path, dry: bool, python: str) -> dict:
    """Run one bench with its limit; its stdout to ``<name>.md``, its rows to ``<name>.jsonl``."""
    args = bench.dry if dry else bench.gpu
    jsonl = out / f"{bench.name}.jsonl"
    jsonl.unlink(missing_ok=True)
    env = {**os.environ, "XATTR_BENCH_JSON": str(jsonl), "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")])}
    if dry:
        env.setdefault("OMP_NUM_THREADS", "1")
    seconds = DRY_SECONDS if dry else bench.seconds
    print(f"== {bench.name} (at most {seconds} s)", flush=True)
    t0 = time.perf_counter()
    with open(out / f"{bench.name}.md", "w") as so, open(out / f"{bench.name}.err", "w") as se:
        try:
            rc = subprocess.run([python, str(ROOT / "scripts" / bench.script), *args], stdout=so, stderr=se, env=env,
                                cwd=ROOT, timeout=seconds).returncode
        except subprocess.TimeoutExpired:
            rc = "timed out"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    sec = time.perf_counter() - t0
    print(f"   {bench.name}: rc {rc}, {sec:.0f} s, {len(rows)} rows", flush=True)
    return {"name": bench.name, "rc": rc, "seconds": sec, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the same calls on the CPU with tiny shapes")
    ap.add_argument("--only", nargs="*", default=None, choices=[b.name for b in BENCHES])
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench-gpu"))
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args(argv)
    if not a.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("bench_gpu: no CUDA device here; make bench-gpu needs a GPU machine (the device tool). "
                  "--dry-run runs the same calls on the CPU with tiny shapes.", file=sys.stderr)
            return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if a.only is None or b.name in a.only]
    print(f"bench-gpu: {len(chosen)} benches, at most {sum(b.seconds for b in chosen) / 60:.1f} min", flush=True)
    done = [run(b, out, a.dry_run, a.python) for b in chosen]
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# bench-gpu: {device_label(a.dry_run)}, {when}", "",
             "Every row of every bench (`scripts/bench_gpu.py`); limit = a plain batched pass of the same network "
             "part in the same run (`timing.limit`).", "", *table([r for d in done for r in d["rows"]]), "",
             "| bench | exit | seconds | rows |", "|---|---|---:|---:|",
             *[f"| {d['name']} | {d['rc']} | {d['seconds']:.0f} | {len(d['rows'])} |" for d in done], ""]
    for d in done:
        lines += [f"## {d['name']}", "", (out / f"{d['name']}.md").read_text().strip(), ""]
    (out / "bench-gpu.md").write_text("\n".join(lines))
    print(f"table: {out / 'bench-gpu.md'}")
    return 0 if all(d["rc"] == 0 for d in done) else 1


if __name__ == "__main__":
    sys.exit(main())
