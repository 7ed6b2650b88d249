# Two commands do all set-up on a fresh machine (README):
#   make reports   creates .venv if needed, then executes every notebook at BUDGET and renders reports/
#   make test      creates .venv if needed, then runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUDGET ?= cpu
# The offline CIFAR-10 copy beside the repo (../shared/data/cifar10-jpeg.tar.gz); with internet,
# DATA_ROOT=./data downloads the official datasets instead.
DATA_ROOT ?= ../shared/data
DEVICE ?= cpu
SEED ?= 0
OUT ?= reports

.PHONY: env test reports smoke-reports bench clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: env
	$(PY) -m pytest -q

reports: env
	$(PY) -m densenet_repro reports --budget $(BUDGET) --data-root $(DATA_ROOT) --device $(DEVICE) --seed $(SEED) --out $(OUT)

# what CI renders: every notebook at the smoke budget, into a scratch folder
smoke-reports: env
	$(PY) -m densenet_repro reports --budget smoke --data-root $(DATA_ROOT) --device $(DEVICE) --out build/smoke-reports

bench: env
	$(PY) -m densenet_repro bench

clean:
	rm -rf build .pytest_cache
