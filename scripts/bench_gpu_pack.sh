#!/bin/bash
# make bench-gpu-pack: what the lent GPU machine lacks, packed for the device tool's `carry` (docs/speed.md).
# That machine has python3 3.12 with torch, torchvision, transformers, timm, lightning, pandas, scikit-image, ...
# but no package registry and no ../shared: this puts wheels of xattr's other dependencies (the versions of
# this venv) in .whl/ and the shared weights in .devdata/weights/, both git-ignored via .git/info/exclude.
# Then: run(command="bash scripts/bench_gpu_device.sh", carry=[".whl", ".devdata"], timeout_s=590).
set -eu
PY=${PY:-.venv/bin/python}
mkdir -p .git/info .whl .devdata/weights
for p in /.whl/ /.devdata/; do grep -qx "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
pkgs="hydra-core omegaconf antlr4-python3-runtime captum zennit quantus grad-cam ttach torchray cachetools importlib-resources"
pins=$($PY -m pip list --format=freeze 2>/dev/null | grep -i -E "^($(echo $pkgs | tr ' ' '|'))==" || true)
[ -n "$pins" ] || { echo "bench-gpu-pack: none of ($pkgs) installed in $PY's environment; run make install first" >&2; exit 2; }
# pure-Python packages: a wheel from the registry, or one built here from the sdist (grad-cam, torchray, antlr4)
$PY -m pip wheel -q --no-deps -w .whl $pins 2>&1 | grep -v -i warning || true
weights=${XATTR_WEIGHTS:-../shared/data/weights}
for f in mobilenet_v2_coral-edd13f30.pth cifar10_resnet20-12fca82f.th cifar10_resnet56-4bfd9763.th; do
  if [ -f "$weights/$f" ]; then cp -u "$weights/$f" .devdata/weights/; else echo "bench-gpu-pack: $weights/$f absent: its rows use random weights" >&2; fi
done
echo "bench-gpu-pack: $(ls .whl | wc -l) wheels ($(du -sh .whl | cut -f1)), weights $(du -sh .devdata/weights | cut -f1)"
