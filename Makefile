# Fintech Fortress: the two README commands (make demo, make test) and friends.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench chaos lint deps redis-server clean

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

deps: $(STAMP) redis-server

redis-server:
	@{ command -v redis-server && command -v redis-check-aof; } >/dev/null || { \
	  echo "installing redis-server and redis-tools with apt-get" >&2; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server redis-tools; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: deps lint
	BANKCTL_REQUIRE_REDIS_SERVER=1 $(PY) -m pytest -q

chaos: deps
	$(VENV)/bin/bankctl chaos --profile long

bench: deps
	$(VENV)/bin/bankctl bench --events 1000000

demo: deps
	$(PY) -m bankctl.demo

clean:
	rm -rf $(VENV) var .pytest_cache
