#!/bin/bash
# Runs ON the lent GPU machine, in the repository copy the device tool makes (make bench-gpu-pack first, here):
#   run(command="bash scripts/bench_gpu_device.sh", carry=[".whl", ".devdata"], timeout_s=590)
# Installs the carried wheels (no registry there), runs the CUDA-only test, then scripts/bench_gpu.py (at most
# 8 min); returns bench-gpu.md and every bench's table, errors and rows in bench-gpu.tgz under $OUT.
set -u
t0=$(date +%s)
OUT=${OUT:-outputs/bench-gpu-device}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site XATTR_WEIGHTS=$PWD/.devdata/weights PYTHONUNBUFFERED=1 WANDB_MODE=offline
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, torchvision, hydra, captum, zennit, quantus, pytorch_grad_cam, torchray, transformers; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__)"
PYTHONPATH=/tmp/site:src timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_input_iba_text_reference.py 2>&1 | tail -4
echo "set-up and test: $(( $(date +%s) - t0 )) s"
timeout 510 python3 scripts/bench_gpu.py --out /tmp/bg
cp /tmp/bg/bench-gpu.md "$OUT"/ 2>/dev/null
tar czf "$OUT"/bench-gpu.tgz -C /tmp bg
echo "total: $(( $(date +%s) - t0 )) s"
