# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned first so the resolver keeps the CPU build that is already installed;
# a range that admits a newer torch would pull several GB of CUDA wheels.
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --quiet --disable-pip-version-check
# Some machines carry extra local package indexes that pip warns about; keep pip's own exit status.
QUIET  := 2>&1 | { grep -v "^WARNING: Location" || true; }
SHELL  := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: demo test lint bench samples clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip $(QUIET)
	$(PIP) install "$(TORCH)" $(QUIET)
	$(PIP) install -c constraints.txt -e ".[dev,samples,diffusion]" $(QUIET)
	$(BIN)/python -c "import cli, pipelines, inpaint_ops, torch, ray"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/pipeline run manifests/retail_shelf.yaml --overwrite
	$(BIN)/pipeline run manifests/retail_shelf_compare.yaml --overwrite
	$(BIN)/pipeline audit out/retail_shelf_compare --reproduce 5
	$(BIN)/pipeline preview out/retail_shelf_compare

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Each benchmark prints one JSON document and writes it to benchmarks/results/ (about 30 min on
# 2 cores; the first run also installs IOPaint into a virtualenv of its own for the comparison).
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/throughput.py | tee benchmarks/results/throughput.json
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/iopaint_compare.py
	$(BIN)/python benchmarks/quality.py --minutes 5 --domains shelves --out benchmarks/results/quality_quick.json

samples: $(BIN)/.installed
	$(BIN)/pipeline samples samples

clean:
	rm -rf out .pytest_cache
