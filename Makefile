# Two commands do all the set-up: `make run` and `make test`. Both create ./.venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit bench install clean prometheus-tools

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
test: $(STAMP) lint prometheus-tools
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## promtool and prometheus (Debian's prometheus package) for tests/sre: found, or installed when
## root and apt-get allow; otherwise those tests skip and say why.
prometheus-tools:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's prometheus package (promtool, prometheus) for tests/sre"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
	       apt-get install -y -q --no-install-recommends prometheus >/dev/null; } \
	  || echo "could not install prometheus; tests/sre that need it will skip"; \
	else echo "promtool/prometheus not found (need root and apt-get to install): tests/sre that need them will skip"; fi

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/test_independence.py

bench: $(STAMP)
	$(BIN)/orderflow bench --json var/bench.json

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
