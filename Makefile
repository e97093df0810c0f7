# dm-tune: `make demo` and `make test` are the two set-up commands (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dm-tune-installed
PYTEST_ARGS ?=

.PHONY: install system-deps test lint demo bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian's chromium (browser checks, PNG export) and docker-compose (compose file check).
system-deps:
	@bash scripts/system_deps.sh

lint: install
	$(BIN)/ruff check dm_tune tests benchmarks

test: install system-deps lint
	$(BIN)/pytest -n 2 --timeout 600 $(PYTEST_ARGS)

demo: install
	$(BIN)/dm-tune run studies/digits-quick.toml

bench: install
	@bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache dm_tune.db dm_tune.db-wal dm_tune.db-shm reports dm_tune_reports
