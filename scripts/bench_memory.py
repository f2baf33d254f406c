"""Peak memory per image of Per-Sample IBA, InputIBA and insertion/deletion at ``chunk`` null / auto / small
(issue 31), so that a user with a small GPU knows what to set. Prints one Markdown table.

    python scripts/bench_memory.py                                   # CPU: MobileNet-V2, 224 px, 4 images
    python scripts/bench_memory.py --device cuda --images 16         # CUDA peak on a GPU
    python scripts/bench_memory.py --model cifar_resnet20 --size 32  # a small smoke run

Each cell runs in a fresh Python process (the allocator keeps freed memory, so cells measured one after another
in one process would read low): the model with random weights (memory does not depend on them), the images,
feature statistics from the images themselves (IBA, InputIBA), then one timed call (``timing.timed``): on CUDA
the peak of ``torch.cuda.max_memory_allocated`` above the memory held before the call; on a CPU the peak
resident set above the size before the call. "per image" divides by the images of the call. ``chunk`` is the
one memory knob of all three (``xattr.core.chunk``: forward rows per device call; ``auto`` sizes it for the
device); results never depend on it. InputIBA runs with few iterations here: its memory does not depend on
their number, only on the rows per call. ``small`` = ``--small`` rows (default 20: two images of 10 copies).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNKS = ("null", "auto", "small")
WHAT = ("iba", "input_iba", "insertion_deletion")
CHEAP_INPUT_IBA = {"epochs": 1, "n_targets": 8, "n_groups": 2, "gan_batch": 4, "feat_steps": 2, "steps": 2}


def chunk_value(name: str, small: int) -> int | str | None:
    return {"null": None, "auto": "auto", "small": small}[name]


def cell(a: argparse.Namespace) -> dict:
    """One (what, chunk) cell in this process: {"peak_mib", "per_image_mib", "seconds", "rows"}."""
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "src"))
    import xattr
    from timing import timed
    from xattr.core.chunk import resolve_chunk

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    warnings.filterwarnings("ignore")
    zoo = xattr.load_model(a.model, weights="random", device=a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.images, 3, a.size, a.size, generator=g).to(a.device)
    target = torch.zeros(a.images, dtype=torch.long, device=a.device)
    chunk = chunk_value(a.chunk, a.small)
    if a.what == "insertion_deletion":
        maps = torch.rand(a.images, 1, a.size, a.size, generator=g).to(a.device)
        m = xattr.metric("insertion_deletion", chunk=chunk)
        fn = lambda: m(zoo.net, x, target, maps)  # noqa: E731
        backward = False
    else:
        kw = CHEAP_INPUT_IBA if a.what == "input_iba" else {}
        m = xattr.method(a.what, zoo, chunk=chunk, **kw)
        xattr.fit(m, x.repeat(2, 1, 1, 1))  # statistics from the images themselves (memory only)
        fn = lambda: m.attribute(x, target)  # noqa: E731
        backward = True
    rows = resolve_chunk(chunk, zoo.net, x[:1], backward=backward)
    sec, peak = timed(fn, a.device)
    return {"peak_mib": peak, "per_image_mib": peak / a.images, "seconds": sec, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--small", type=int, default=20, help="rows per call of the 'small' column")
    ap.add_argument("--what", nargs="*", default=list(WHAT), choices=list(WHAT))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: all cores)")
    ap.add_argument("--cell", nargs=2, metavar=("WHAT", "CHUNK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cell:
        a.what, a.chunk = a.cell
        print(json.dumps(cell(a)))
        return
    sys.path.insert(0, str(ROOT / "scripts"))
    from timing import record

    base = [sys.executable, __file__, "--device", a.device, "--model", a.model, "--size", str(a.size), "--images",
            str(a.images), "--small", str(a.small), "--threads", str(a.threads)]
    env = {**os.environ, "XATTR_BENCH_JSON": ""}  # the cells do not record; this process does
    results: dict[tuple[str, str], dict] = {}
    for what in a.what:
        for ch in CHUNKS:
            done = subprocess.run([*base, "--cell", what, ch], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                results[what, ch] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
            else:
                results[what, ch] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[what, ch]
            print(f"  {what} chunk {ch}: {r.get('per_image_mib', float('nan')):.0f} MiB per image", file=sys.stderr,
                  flush=True)
            if "error" not in r:
                record("memory", model=f"{a.model} {a.size} px", path=f"{what}, chunk {ch} ({r['rows'] or 'all'} rows)",
                       device=a.device, ms_per_image=1000 * r["seconds"] / a.images, peak_mib=r["peak_mib"])
    kind = "CUDA allocated" if a.device.startswith("cuda") else "CPU resident set"
    print(f"\nPeak memory ({kind}, MiB above the start of the call), {a.model} {a.size}x{a.size}, {a.images} images "
          f"per call, random weights; 'small' = {a.small} rows per call\n")
    print("| what | " + " | ".join(f"chunk {c}: per image (call, rows)" for c in CHUNKS) + " |")
    print("|---|" + "---:|" * len(CHUNKS))
    for what in a.what:
        cells = []
        for ch in CHUNKS:
            r = results[what, ch]
            cells.append(f"error: {r['error'][:60]}" if "error" in r else
                         f"{r['per_image_mib']:.0f} ({r['peak_mib']:.0f}, {r['rows'] or 'all'})")
        print(f"| {what} | " + " | ".join(cells) + " |")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
