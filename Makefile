# The README's two commands: `make demo` and `make test`. Each does its own set-up on a fresh machine and is quick
# when nothing changed (the venv is rebuilt only when pyproject.toml is newer than its stamp).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DATASET := /usr/share/datasets/fashion-mnist

.PHONY: demo test setup dataset lint docs bench bench-peers clean

demo: setup
	$(VENV)/bin/cyclr demo

test: setup
	$(PY) -m pytest -q

setup: $(STAMP) dataset

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The real Fashion-MNIST comes from Debian's package; only root can install it.
dataset:
	@if [ ! -d $(DATASET) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' or set CYCLR_DATA"; \
	  fi; \
	fi

lint: setup
	$(VENV)/bin/ruff check .

# The documentation site, into build/site/ (open build/site/index.html). The notebooks are executed in quick mode
# first, each only when it changed since its last run (the notebook test also leaves its executed copies there), so
# the site shows their outputs; the API reference is read from the docstrings.
EXECUTED_NBS := $(patsubst nbs/%,build/nbs/%,$(wildcard nbs/*.ipynb))

docs: setup $(EXECUTED_NBS)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

build/nbs/%.ipynb: nbs/%.ipynb | $(STAMP)
	CYCLR_QUICK=1 $(VENV)/bin/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=600 \
	    --output-dir build/nbs $<

bench: setup
	$(PY) benchmarks/overhead.py

# fastai, Lightning and torch-lr-finder live in an environment of their own, never among the package's dependencies,
# with the same torch as .venv (pip's constraints here keep it from fetching another); cyclr is installed editable.
PEERS         := .venv-peers
TORCH_VERSION ?= 2.14.1

bench-peers: $(PEERS)/.installed dataset
	nice $(PEERS)/bin/python benchmarks/peers.py

$(PEERS)/.installed: pyproject.toml
	test -x $(PEERS)/bin/python || python3 -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q 'torch==$(TORCH_VERSION)' 'fastai>=2.8,<2.9' 'lightning>=2.4' \
	    'torch-lr-finder>=0.2'
	$(PEERS)/bin/python -m pip install -q -e .
	touch $@

clean:
	rm -rf $(VENV) runs *.egg-info

# The GPU day (benchmarks/README.md): what the device image lacks, packed into .gpu-pack/, and the `run` call printed.
# A rerun of what did not finish: make gpu-pack GPU_PACK_ARGS='--skip-done results/gpu/<day>/gpu_check.json'
.PHONY: gpu-pack
gpu-pack: $(STAMP)
	$(PY) benchmarks/gpu_pack.py $(GPU_PACK_ARGS)
