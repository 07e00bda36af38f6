"""The benchmark's own state: a dedicated PostgreSQL database, its private Redis, and the
environment every process (driver, workers, web, sandbox) runs with."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from .rig import PY, ROOT, TOKEN

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
BROKER_KEYS = ("_kombu", "celery", "unacked")  # what flush_app_keys keeps while workers run


@dataclass(frozen=True)
class Target:
    """Where the benchmark keeps its state."""

    server_url: str  # a PostgreSQL URL naming the maintenance database
    database: str
    redis_url: str

    @property
    def database_url(self) -> str:
        return urlunsplit(urlsplit(self.server_url)._replace(path="/" + self.database))


def default_server_url() -> str:
    """The PostgreSQL server of DATABASE_URL when it names one, else the local default."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


def make_target(database: str, redis_url: str) -> Target:
    if not NAME_RE.match(database):
        raise SystemExit(f"--database {database!r}: use lower-case letters, digits and _")
    return Target(default_server_url(), database, redis_url)


def base_env(target: Target, sandbox_url: str = "") -> dict[str, str]:
    """Production-like settings (DEBUG off) on the benchmark's database and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTIONS_", "UTILITYAPI_"))}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        DATABASE_URL=target.database_url,
        CELERY_BROKER_URL=target.redis_url,
        REDIS_URL=target.redis_url,
        UTILITYAPI_BASE_URL=sandbox_url or "http://127.0.0.1:9/api/v2",
        UTILITYAPI_TOKEN=TOKEN,
        UTILITYAPI_SANDBOX_TOKEN=TOKEN,
        COLLECTIONS_API_POST_RATE="1000000/s",  # the benchmark measures, it does not abuse
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="bench-only-secret-key-not-for-production-0123456789",  # noqa: S106
        DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1,testserver",
        DJANGO_SECURE_SSL_REDIRECT="0",
        LOG_LEVEL="WARNING",
    )
    return env


def manage(target: Target, *args: str) -> str:
    """Run a manage.py command on the benchmark's database; returns its output."""
    cmd = [PY, "manage.py", *args]
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        cmd, cwd=ROOT, env=base_env(target), check=True, capture_output=True, text=True
    )
    return done.stdout


def create_database(target: Target) -> None:
    """Drop and create the benchmark's database, then migrate it."""
    with psycopg.connect(target.server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{target.database}"')
    manage(target, "migrate", "--noinput", "--verbosity", "0")


def drop_database(target: Target) -> None:
    from django.db import connections

    connections.close_all()
    with psycopg.connect(target.server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')


def truncate() -> None:
    """Empty the collection tables and the task results (between runs)."""
    from django.db import connection
    from django_celery_results.models import TaskResult

    from collections_app.models import Attempt, CollectionRequest, DailySpend

    models = (Attempt, CollectionRequest, DailySpend, TaskResult)
    tables = [m._meta.db_table for m in models]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        cursor.execute("ANALYZE")


def broker(target: Target) -> redis.Redis:
    return redis.Redis.from_url(target.redis_url)


def flush_redis(target: Target) -> None:
    """Empty Redis: only while no worker runs (kombu's queue bindings live there too)."""
    broker(target).flushdb()


def flush_app_keys(target: Target) -> None:
    """Forget the service's own keys (rate-limit slots, pauses, call log), keep the broker's."""
    client = broker(target)
    keys = [k for k in client.scan_iter() if not k.decode().startswith(BROKER_KEYS)]
    if keys:
        client.delete(*keys)


def queued_messages(target: Target, waiting_only: bool = False) -> int:
    """Messages waiting in the broker's queues plus (unless `waiting_only`) those a worker
    holds unacknowledged: a task acknowledges its message when it returns (acks_late), so the
    task that stored the last outcome still holds its own at that moment."""
    client = broker(target)
    queues = [k for k in client.scan_iter("celery*") if client.type(k) == b"list"]
    waiting = sum(client.llen(k) for k in queues)
    return waiting if waiting_only else waiting + client.hlen("unacked")


def wait_idle(target: Target, timeout: float = 120) -> float:
    """Wait until the broker is idle; returns the seconds it took."""
    start = time.monotonic()
    while queued_messages(target):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"broker not idle within {timeout:g}s")
        time.sleep(0.05)
    return time.monotonic() - start


def versions(target: Target) -> dict[str, Any]:
    with psycopg.connect(target.server_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "postgresql": row[0] if row else "?",
        "redis": broker(target).info("server").get("redis_version", "?"),
    }
