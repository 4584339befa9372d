# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline-friendly Prefect: no telemetry, ephemeral API with a generous start-up timeout,
# and a Prefect home inside the checkout (git-ignored) instead of ~/.prefect.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_ENABLED := true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: demo test lint install bench bench-basicpy clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "shadeflow needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	$(BIN)/python -m pip check
	touch $@

demo: $(STAMP)
	$(BIN)/shadeflow demo --out demo-output

test: lint
	$(BIN)/python -m pytest

# Lint and formatting (ruff, configured in pyproject.toml): part of `make test`, so CI fails on violations.
# `$(BIN)/ruff format . && $(BIN)/ruff check --fix .` repairs most of them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

BASICPY := bench-output/basicpy-venv

# Every benchmark in turn (figures in BENCHMARKS.md); estimate compares with BaSiCPy when bench-basicpy ran.
bench: $(STAMP)
	$(BIN)/python bench/meanimage.py
	$(BIN)/python bench/model_build.py
	$(BIN)/python bench/correct.py
	$(BIN)/python bench/estimate.py

# BaSiCPy, the reference of bench/estimate.py, in its own interpreter: basicpy 2.0.0 needs scipy<1.13,
# which this project's numpy/scipy pins exclude, so it cannot be an extra of the project itself.
bench-basicpy: $(BASICPY)/.installed

$(BASICPY)/.installed:
	$(PYTHON) -m venv $(BASICPY)
	$(BASICPY)/bin/python -m pip install --quiet torch==2.13.0 basicpy==2.0.0 gradient-free-optimizers==1.8.1
	touch $@

clean:
	rm -rf $(VENV) .prefect demo-output .pytest_cache build *.egg-info
