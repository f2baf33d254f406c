# xattr: `make demo` and `make test` set themselves up from nothing (see README).
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# Torch builds that lie on this machine's disk (pip takes them offline); override for other machines.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export WANDB_MODE ?= offline
export HYDRA_FULL_ERROR ?= 0

.PHONY: install browser meta-eval demo test test-slow lint bench bench-gpu bench-gpu-pack docs clean table text-transformers resnet-vs-vit mutation

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]' $(TORCH_PINS)
	$(MAKE) -s browser
	rm -f $(VENV)/.installed-*
	touch $@

# Chromium for tests/test_report.py's browser test (Playwright drives this binary; a browser that Playwright
# downloads by itself cannot be fetched here): Debian's package, once, where apt-get works (root or sudo -n);
# elsewhere the test is skipped and says why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	    echo "no chromium and no root/sudo for apt-get: the browser test will be skipped"; exit 0; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium >/dev/null || echo "apt-get could not install chromium: the browser test will be skipped"; }

demo: install
	$(BIN)/python -m xattr.demo

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not slow" tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

# mutation testing of the modules that compute published numbers (one warm process forking per mutant, 2-10 s a
# mutant on 2 cores, ~5,400 mutants): make mutation [MODULES="metrics/localisation.py data/roar.py"];
# results kept per mutant (a re-run skips them); table: scripts/mutation.py --report, docs/testing.md
mutation: install
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install -q -e '.[mutation]'
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python scripts/mutation.py $(MODULES)

lint: install
	$(BIN)/ruff check src tests scripts

bench: install
	for s in scripts/bench_*.py; do [ $$s = scripts/bench_gpu.py ] || $(BIN)/python $$s || exit 1; done

# every GPU figure in one call (a lent GPU machine, <= 8 min; see docs/speed.md): one table in
# outputs/bench-gpu/bench-gpu.md (python scripts/bench_gpu.py --dry-run tries the same calls on the CPU)
bench-gpu: install
	$(BIN)/python scripts/bench_gpu.py

# the lent GPU machine has torch but no registry and no ../shared: wheels of the other dependencies -> .whl/,
# weights -> .devdata/; then run(command="bash scripts/bench_gpu_device.sh", carry=[".whl", ".devdata"]) (docs/speed.md)
bench-gpu-pack: install
	bash scripts/bench_gpu_pack.sh

# the API reference from the public names' docstrings (pdoc, installed on first use) -> outputs/docs/
docs: install
	$(BIN)/python -c "import pdoc" 2>/dev/null || $(BIN)/pip install -q pdoc
	$(BIN)/python -m pdoc xattr xattr.api -o outputs/docs
	@echo "API reference: outputs/docs/index.html"

clean:
	rm -rf outputs multirun .pytest_cache

# N methods x every image metric on the shared ImageNet images, then the report (docs/cli.md, README):
# make meta-eval [ARGS="dataset.limit=50"] (a grown limit resumes the same runs); report in outputs/multirun/meta_eval/report/
meta-eval: install
	$(BIN)/python -m xattr.run --multirun experiment=meta_eval $(ARGS)
	$(BIN)/python -m xattr.report outputs/multirun/meta_eval

# Regenerate one paper table: make table ID=inputiba_t3_insdel [ARGS="dataset.limit=50"]
table: install
	$(BIN)/python -m xattr.run --multirun experiment=$(ID) $(ARGS)
	$(BIN)/python -m xattr.table $(ID) outputs/multirun/$(ID)

# ch. 6 Fig. 5b (insertion / deletion over tokens) and Table 1 (highlights) for the IMDB LSTM and the IMDB
# transformer side by side (docs/text.md "Transformers"): make text-transformers LIMIT=32
# InputIBA's text row is left out on a CPU (~6 min per review): add it with METHODS=input_iba_text,...
LIMIT ?= 32
METHODS ?= integrated_gradients,lime,iba,random,gradient,input_x_gradient,deepshap
text-transformers: install
	$(BIN)/python -m xattr.run --multirun experiment=inputiba_f5_imdb_insdel dataset.limit=$(LIMIT) method=$(METHODS) $(ARGS)
	$(BIN)/python -m xattr.run --multirun experiment=inputiba_f5_imdb_insdel_transformer dataset.limit=$(LIMIT) \
		method=$(METHODS),attention_rollout,chefer $(ARGS)
	$(BIN)/python -m xattr.table inputiba_f5_imdb_insdel outputs/multirun/inputiba_f5_imdb_insdel \
		outputs/multirun/inputiba_f5_imdb_insdel_transformer
	$(BIN)/python -m xattr.tables.text_qualitative outputs/multirun/inputiba_f5_imdb_insdel
	$(BIN)/python -m xattr.tables.text_qualitative outputs/multirun/inputiba_f5_imdb_insdel_transformer

# the same methods and metrics on the CIFAR-10 ResNet-20 and the CIFAR-10 ViT (README "Vision transformers"):
# make resnet-vs-vit LIMIT=32  -> outputs/resnet_vs_vit/table.md, maps.png
resnet-vs-vit: install
	$(BIN)/python scripts/resnet_vs_vit.py --limit $(LIMIT) $(ARGS)
