# make demo: the main job (a reproduction on built-in data); make test: the test suite.
# Both create the virtual environment from constraints.txt when it is missing; make docs builds the
# API reference and the tutorials into docs/_build/html, make lint runs ruff.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format bench docs clean

$(BIN)/pyro-unlearn: setup.cfg constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,experiments]"
	touch $@

demo: $(BIN)/pyro-unlearn
	$(BIN)/pyro-unlearn demo --json results/demo.json --out results

test: $(BIN)/pyro-unlearn
	$(BIN)/python -m pytest

lint: $(BIN)/pyro-unlearn
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/pyro-unlearn
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# the API reference and the tutorials (as committed) into docs/_build/html; a warning fails it
docs: $(BIN)/sphinx-build
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

$(BIN)/sphinx-build: $(BIN)/pyro-unlearn
	$(BIN)/pip install --quiet -c constraints.txt -e ".[docs]"
	touch $@

bench: $(BIN)/pyro-unlearn
	$(BIN)/python benchmarks/bench_losses.py

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache docs/_build docs/_generated
