# The two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
SANDBOX_PORT ?= 8765
export PATH := $(BIN):$(PATH)
# Every target here is development: ask for it explicitly (the settings default to production).
run urls test lint bench mutation: export DJANGO_DEBUG := 1

.PHONY: run urls test lint lock bench mutation install install-test redis superuser clean

# Installs come from uv.lock (every package pinned, with hashes); `make lock` refreshes it.
# uv itself is bootstrapped from PyPI into .tools/ at a pinned version unless UV is given.
UV_VERSION := 0.13.9
UV ?= $(abspath .tools)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON ?= python3
export UV_PYTHON_DOWNLOADS ?= never

$(UV):
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet uv==$(UV_VERSION)

# The run environment; `--inexact` keeps the test tools of an earlier `make test`.
$(VENV)/.installed: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --inexact --quiet
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(UV) sync --frozen --all-extras --quiet
	touch $@

lock: | $(UV)
	$(UV) lock --upgrade

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Start a throwaway local Redis when none answers (it keeps nothing on disk): REDIS_URL's, or
# the broker's when REDIS_URL is unset.
redis:
	@$(PY) scripts/ensure_redis.py "$${REDIS_URL:-$${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}}"

run: install redis
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	@$(PY) scripts/dev_login.py
ifeq ($(UTILITYAPI_TOKEN),)
	@echo "UTILITYAPI_TOKEN is unset: using the built-in sandbox at http://127.0.0.1:$(SANDBOX_PORT)/api/v2"
	@UTILITYAPI_TOKEN=sandbox-token UTILITYAPI_BASE_URL=http://127.0.0.1:$(SANDBOX_PORT)/api/v2 \
		UTILITYAPI_WEBHOOK_SECRET=$${UTILITYAPI_WEBHOOK_SECRET:-sandbox-webhook-secret} \
		SANDBOX_WEBHOOK_URL=http://$${WEB_BIND:-127.0.0.1:8000}/webhooks/utilityapi/ \
		$(PY) scripts/run.py $(BIN)/honcho start web worker beat sandbox
else
	@$(PY) scripts/run.py $(BIN)/honcho start web worker beat
endif

# The URLs and the development login again, while `make run` runs.
urls:
	@$(PY) scripts/run.py --urls

test: install-test redis
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy collections_app project sandbox

# Mutation testing, one module at a time against its fast tests (docs/testing.md).
mutation: install-test redis
	$(PY) scripts/mutation.py $(if $(MODULE),--module $(MODULE))

# The benchmark starts its own redis-server and PostgreSQL database (docs/benchmarks.md).
bench: install-test
	$(PY) scripts/bench.py --json docs/benchmarks.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools staticfiles db.sqlite3 .pytest_cache
