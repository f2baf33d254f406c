#!/usr/bin/env bash
# Every GPU figure in one call (make bench-gpu): each bench's GPU rows, each written to outputs/bench-gpu/<name>.md
# as it finishes (a bench that fails or runs out of its time does not stop the others). Sized to fit a lent
# machine's 15 minutes with start-up: about 8 minutes in all on an H100-class GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT_DIR:-outputs/bench-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 || true
PEAK=${PEAK_TFLOPS:-989}   # bf16 dense peak of the lent GPU (H100/H200 SXM: 989); used for % of peak
bench() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.err"; echo "rc=$?" >> "$OUT/$name.err"
  tail -n 25 "$OUT/$name.md"
}
bench iba 120 $PY scripts/bench_iba.py --device cuda --images 32 --batch 16
bench metrics 120 $PY scripts/bench_metrics.py --device cuda --size 224 --images 64 --peak-tflops "$PEAK"
bench input_iba 120 $PY scripts/bench_input_iba.py --device cuda --model vgg16 --size 224 --batch 32 --epochs 20 \
  --steps 60 --feat-steps 10 --single 2
bench axioms 60 $PY scripts/bench_axioms.py --prior paper --batch 16 64
bench baselines 60 $PY scripts/bench_baselines.py --device cuda --size 224 --images 16
bench pathways 40 $PY scripts/bench_pathways.py --devices cuda --models mobilenet_v2 --size 224 --images 16
bench text 30 $PY scripts/bench_text.py --devices cuda
bench roar 60 $PY scripts/bench_roar.py
echo "tables in $OUT/"
