# The README's first two commands: `make demo` and `make test`. Both create the venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser services demo test lint fmt bench bench-audit soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The console's browser tests drive Debian's chromium (Playwright downloads no browser).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# The scale-out tests use PostgreSQL (trust auth) and Redis on loopback, nginx in front of
# replicas and libfaketime to skew a replica's clock: start the services when installed but
# stopped, install what is missing.
services:
	pg_isready -q -h 127.0.0.1 -p 5432 || ( \
	  command -v pg_ctlcluster >/dev/null || (apt-get update -qq && apt-get install -y -qq postgresql); \
	  service postgresql start && for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done)
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || (apt-get update -qq && apt-get install -y -qq nginx-light)
	command -v faketime >/dev/null || (apt-get update -qq && apt-get install -y -qq faketime)
	redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || ( \
	  command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server); \
	  redis-server --daemonize yes --bind 127.0.0.1 --save '' --appendonly no)

demo: $(STAMP)
	$(BIN)/deputy demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: lint browser
	$(BIN)/pytest -q
	$(BIN)/pytest -q --backend=postgres tests/integration tests/sdk tests/docs tests/e2e tests/interop

bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/issue_bench.py
	$(BIN)/python bench/verify_bench.py
	$(MAKE) services
	$(BIN)/python bench/scale_bench.py

bench-audit: $(STAMP)
	$(BIN)/python bench/audit_query_bench.py
	$(BIN)/python bench/console_bench.py

# Ten minutes of legitimate issuances with a hostile mix alongside, on the default (SQLite)
# deployment; fails if memory grows or the legitimate p99 passes twice the clean run's.
# Options go in SOAK_ARGS, e.g. SOAK_ARGS="--minutes 2" or SOAK_ARGS="--backend postgres".
soak: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) artifacts .deputy-demo .pytest_cache .mypy_cache .ruff_cache
