# Two commands do all the set-up: `make run` and `make test`. Both create ./.venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

## Start nats-server and the four services on embedded defaults and drive a demo load (Ctrl-C stops).
run: $(STAMP)
	$(BIN)/orderflow up

## Lint, type-check and run every test (unit, integration, end to end).
test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/test_independence.py

bench: $(STAMP)
	$(BIN)/orderflow bench --json var/bench.json

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
