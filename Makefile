# The commands operators and scripts rely on (README, "Operating it").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT

.PHONY: run test test-sqlite test-postgres serve lint format bench

# A virtualenv with the service's pinned dependencies (and, for tests, the dev ones).
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
		{ echo "Python 3.11 or newer is needed as '$(PYTHON)' (make PYTHON=python3.12 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || \
		{ echo "Could not make a virtualenv: on Debian/Ubuntu, apt-get install python3-venv"; exit 1; }

$(VENV)/.deps: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.deps

# Development: the embedded SQLite (db.sqlite3), granian with one worker that restarts when
# the code changes (config/serve.py --reload; the production server's HTTP layer, so chunked
# bodies and the limits behave as in production), and a fresh write token named local-dev
# (the previous one is revoked) for the curl line it prints.
run: $(VENV)/.deps
	$(BIN)/python manage.py migrate --noinput
	@$(BIN)/python manage.py token revoke local-dev >/dev/null 2>&1 || true
	@token=$$($(BIN)/python manage.py token create local-dev --scope write) && \
	echo && echo "Inventory service on http://$(HOST):$(PORT). Try:" && \
	echo "  curl -s -X POST http://$(HOST):$(PORT)/items -H 'Authorization: Bearer $$token' -H 'Content-Type: application/json' -d '{\"name\": \"apple\", \"qty\": 5}'" && \
	echo
	exec $(BIN)/python -m config.serve --reload

# Every test: lint, then the whole suite on SQLite and on PostgreSQL. TEST_POSTGRES_URL names
# a PostgreSQL of your own (its role needs CREATEDB); without it a throwaway cluster is made.
test: lint test-sqlite test-postgres

test-sqlite: $(VENV)/.dev-deps
	env -u DATABASE_URL $(BIN)/python -m pytest

test-postgres: $(VENV)/.dev-deps
ifdef TEST_POSTGRES_URL
	DATABASE_URL=$(TEST_POSTGRES_URL) $(BIN)/python -m pytest
else
	scripts/with-postgres $(BIN)/python -m pytest
endif

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev-deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Production: granian with WEB_CONCURRENCY worker processes (config/serve.py). Needs
# SECRET_KEY; makes no token (manage.py token create NAME --scope read|write).
serve: $(VENV)/.deps
	$(BIN)/python manage.py migrate --noinput
	exec $(BIN)/python -m config.serve

# Benchmarks: wrk against `make serve` on SQLite, then on a throwaway PostgreSQL; the report
# and plots go to bench/results/. Phony because bench/ is also a directory. Options pass
# through ARGS: make bench ARGS=--quick (a smoke run of a few minutes).
bench: $(VENV)/.deps
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	BENCH_COMMAND="make bench$(if $(ARGS), ARGS='$(ARGS)')" bench/run $(ARGS)
