# One command each: `make test` (venv from nothing, install, lint, tests) and `make demo`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

LINT_DIRS := $(wildcard src tests benchmarks)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)

test: lint
	$(BIN)/python -m pytest -n 2 -q

demo: $(STAMP)
	$(BIN)/hexpress demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
