# The two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
REDIS_URL ?= redis://127.0.0.1:6379/0
SANDBOX_PORT ?= 8765
export PATH := $(BIN):$(PATH)

.PHONY: run test lint bench install install-test redis superuser clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Start a throwaway local Redis when none answers (it keeps nothing on disk).
redis:
	@$(PY) scripts/ensure_redis.py "$${CELERY_BROKER_URL:-$(REDIS_URL)}"

run: install redis
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	@$(PY) scripts/dev_login.py
ifeq ($(UTILITYAPI_TOKEN),)
	@echo "UTILITYAPI_TOKEN is unset: using the built-in sandbox at http://127.0.0.1:$(SANDBOX_PORT)/api/v2"
	UTILITYAPI_TOKEN=sandbox-token UTILITYAPI_BASE_URL=http://127.0.0.1:$(SANDBOX_PORT)/api/v2 \
		$(BIN)/honcho start web worker beat sandbox
else
	$(BIN)/honcho start web worker beat
endif

test: install-test redis
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy collections_app project sandbox

bench: install-test redis
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) staticfiles db.sqlite3 .pytest_cache
