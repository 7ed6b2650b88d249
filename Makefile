# Set-up on a fresh machine is part of every target (README):
#   make reports     creates .venv if needed, then executes every notebook at BUDGET and renders reports/
#   make test        creates .venv if needed, then runs the whole test suite
#   make test-quick  the same without the tests marked slow (for editing)
#   make lab         JupyterLab on notebooks/, with this environment's python as the notebooks' kernel
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUDGET ?= cpu
# Datasets: $DENSENET_DATA if set (e.g. an offline copy), else ./data inside the repo, where the
# official archives are downloaded when the network allows it. Override: make reports DATA_ROOT=DIR
DATA_ROOT ?= $(or $(DENSENET_DATA),data)
# unset: cpu, except that the paper budget asks for a GPU or an explicit DEVICE=cpu (reports/cli.py)
DEVICE ?=
SEED ?= 0
OUT ?= reports
# Where `make lab` installs the kernelspec that JupyterLab finds first for the notebooks' "python3".
JUPYTER_DIR := $(abspath $(VENV))/share/jupyter

.PHONY: env test test-quick reports smoke-reports bench lab clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: env
	$(PY) -m pytest -q

test-quick: env
	$(PY) -m pytest -q -m "not slow"

reports: env
	$(PY) -m densenet_repro reports --budget $(BUDGET) --data-root $(DATA_ROOT) $(if $(DEVICE),--device $(DEVICE)) --seed $(SEED) --out $(OUT)

# what CI renders: every notebook at the smoke budget, into a scratch folder
smoke-reports: env
	$(PY) -m densenet_repro reports --budget smoke --data-root $(DATA_ROOT) $(if $(DEVICE),--device $(DEVICE)) --out build/smoke-reports

bench: env
	$(PY) -m densenet_repro bench

# The notebooks declare the kernel "python3"; JupyterLab looks it up in $JUPYTER_PATH first, so the
# kernelspec installed here (argv: this venv's python) wins over any other environment's "python3".
lab: env
	$(PY) -m ipykernel install --prefix $(abspath $(VENV)) --name python3 --display-name "Python 3 (densenet-repro)" >/dev/null
	JUPYTER_PATH=$(JUPYTER_DIR) $(PY) -m jupyter lab --notebook-dir=notebooks

clean:
	rm -rf build .pytest_cache
