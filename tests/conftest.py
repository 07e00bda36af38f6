"""Real-service fixtures: PostgreSQL (pytest-django's test database), Redis, the sandbox on
loopback and real Celery worker processes.

Defaults for the environment are in tests/settings.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")
# On RabbitMQ (CELERY_BROKER_URL=amqp://…) the fleet's state still needs a Redis database.
os.environ.setdefault(
    "REDIS_URL",
    os.environ["CELERY_BROKER_URL"]
    if os.environ["CELERY_BROKER_URL"].startswith("redis")
    else "redis://127.0.0.1:6379/1",
)
os.environ.setdefault("UTILITYAPI_TOKEN", "sandbox-token")
os.environ.setdefault("COLLECTIONS_COALESCE_WINDOW_MS", "0")

import pytest
import redis
from django.db import connections

ROOT = Path(__file__).resolve().parent.parent
BROKER_IS_REDIS = os.environ["CELERY_BROKER_URL"].startswith(("redis://", "rediss://"))


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def use_broker(url: str | None) -> None:
    """Point this process's Celery app at `url`, or back at CELERY_BROKER_URL with None.
    (The gate follows settings.REDIS_URL: its connection is cached per URL.)"""
    from project.celery import app

    app.conf.broker_write_url = app.conf.broker_read_url = url
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The suite's Redis database (the broker too, unless it is RabbitMQ), empty at the start
    of the test."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def sandbox(settings: Any) -> Iterator[Any]:
    """The UtilityAPI sandbox on an ephemeral loopback port, and settings pointing at it."""
    from sandbox.server import SandboxServer
    from sandbox.state import SandboxState

    server = SandboxServer(SandboxState("sandbox-token"))
    server.start_in_thread()
    settings.UTILITYAPI_BASE_URL = server.url
    settings.UTILITYAPI_TOKEN = "sandbox-token"
    yield server
    server.shutdown()
    server.server_close()


class Worker:
    """A real `celery worker` process against the test database, Redis and the sandbox."""

    def __init__(self, env: dict[str, str], concurrency: int = 4) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}@localhost"
        self.log = Path(tempfile.mkstemp(prefix="celery-worker-", suffix=".log")[1])
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--hostname",
            self.name,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._ready, timeout=30, interval=0.1)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{self.output()}")
        return "ready." in self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker (parent and pool), as a crashing host would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def worker_env(sandbox: Any, **overrides: Any) -> dict[str, str]:
    """Environment for a worker process: the test database, Redis, and fast test timings."""
    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the worker runs the project's own settings
    env.update(
        DATABASE_URL=f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        UTILITYAPI_BASE_URL=sandbox.url,
        UTILITYAPI_TOKEN=sandbox.state.token,
        UTILITYAPI_SANDBOX_TOKEN=sandbox.state.token,  # the only token plain http may carry
        UTILITYAPI_READ_TIMEOUT="2",
        UTILITYAPI_CONNECT_TIMEOUT="1",
        COLLECTIONS_LEASE_MARGIN_SECONDS="1",
        COLLECTIONS_MAX_ATTEMPTS="4",
        COLLECTIONS_RETRY_BASE_SECONDS="0.2",
        COLLECTIONS_RETRY_MAX_SECONDS="1",
        COLLECTIONS_ACCOUNT_PAUSE_SECONDS="3",
        COLLECTIONS_STUCK_AFTER_SECONDS="5",
        DATABASE_CONN_MAX_AGE="0",
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def start_worker(
    transactional_db: None, redis_db: redis.Redis, sandbox: Any, settings: Any
) -> Iterator[Callable[..., Worker]]:
    """Start real worker processes: `start_worker(concurrency=4, **env_overrides)`.

    The test's own settings are aligned with the worker's environment. On RabbitMQ, the
    queue is purged first (on Redis, `redis_db` has flushed it)."""
    workers: list[Worker] = []
    if not BROKER_IS_REDIS:
        from project.celery import app

        app.control.purge()

    def start(concurrency: int = 4, **overrides: Any) -> Worker:
        env = worker_env(sandbox, **overrides)
        for name in ("COLLECTIONS_MAX_ATTEMPTS", "COLLECTIONS_STUCK_AFTER_SECONDS"):
            setattr(settings, name, int(env[name]))
        worker = Worker(env, concurrency)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    for worker in workers:
        if os.environ.get("SHOW_WORKER_LOGS"):
            print(worker.output())
        worker.log.unlink(missing_ok=True)


@pytest.fixture
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker()


# --- a real browser -----------------------------------------------------------------------------
# Never `playwright install`: the browser is the system's (PLAYWRIGHT_CHROMIUM).
CHROMIUM = os.environ.get("PLAYWRIGHT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct-horse-battery"  # of the users the browser tests log in as


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Chromium page at 1400 × 1000; a JavaScript error on any page fails the test.

    Playwright's sync API runs an event loop in this thread, so Django's async-safety check
    must be told that this thread's ORM calls are synchronous."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(20_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        browser.close()
        # While Playwright's loop runs, Django keeps this thread's connection apart (asgiref
        # treats the thread as async); close it here, or it outlives the test database.
        connections.close_all()
    assert not errors, f"JavaScript errors: {errors}"
