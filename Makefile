# One verb per job. `make demo` and `make test` work on a fresh clone (they install what they need).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install install-dev demo test lint format mypy bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.core

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: install  ## dispatch tasks to the SQLite default and run a worker on them
	cd examples && ../$(BIN)/python quickstart.py

test: install-dev  ## the whole test suite (service-backed tests skip without their broker)
	$(BIN)/pytest -q

lint: install-dev
	$(BIN)/ruff check asynctasq tests benchmarks examples
	$(BIN)/ruff format --check asynctasq tests benchmarks examples

format: install-dev
	$(BIN)/ruff format asynctasq tests benchmarks examples
	$(BIN)/ruff check --fix asynctasq tests benchmarks examples

mypy: install-dev
	$(BIN)/mypy

bench: install-dev  ## our side of shared/BENCHMARKS.md on SQLite
	$(BIN)/python benchmarks/harness.py --driver sqlite --workload all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info examples/asynctasq.db*
