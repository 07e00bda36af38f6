"""The benchmark's own state: a dedicated PostgreSQL database, a dedicated Redis db, and the
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

from .procs import PY, ROOT, TOKEN

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
TABLES = [
    "collections_app_attempt",
    "collections_app_collectionrequest",
    "django_celery_results_taskresult",
]
GATE_PATTERN = "collections:uapi:*"


@dataclass(frozen=True)
class Target:
    """Where the benchmark keeps its state."""

    server_url: str  # a PostgreSQL URL naming the maintenance database
    database: str
    redis_url: str

    @property
    def database_url(self) -> str:
        parts = urlsplit(self.server_url)
        return urlunsplit(parts._replace(path="/" + self.database))


def default_server_url() -> str:
    """The PostgreSQL server of DATABASE_URL when it names one, else the local default."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


def make_target(database: str, redis_db: int, server_url: str | None = None) -> Target:
    if not NAME_RE.match(database):
        raise SystemExit(f"--database {database!r}: use lower-case letters, digits and _")
    broker = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(broker)._replace(path=f"/{redis_db}"))
    return Target(server_url or default_server_url(), database, redis_url)


def base_env(target: Target, sandbox_url: str = "") -> dict[str, str]:
    """Production-like settings (DEBUG off) on the benchmark's database and Redis db."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTIONS_", "UTILITYAPI_"))}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        DATABASE_URL=target.database_url,
        CELERY_BROKER_URL=target.redis_url,
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


def create_database(target: Target) -> None:
    """Drop and create the benchmark's database, then migrate it (about 10 s)."""
    with psycopg.connect(target.server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{target.database}"')
    cmd = [PY, "manage.py", "migrate", "--noinput", "--verbosity", "0"]
    subprocess.run(cmd, cwd=ROOT, env=base_env(target), check=True)  # noqa: S603


def drop_database(target: Target) -> None:
    from django.db import connections

    connections.close_all()
    with psycopg.connect(target.server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')


def truncate() -> None:
    """Empty the collection tables and the task results (between runs)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        cursor.execute("VACUUM ANALYZE collections_app_collectionrequest")


def broker(target: Target) -> redis.Redis:
    return redis.Redis.from_url(target.redis_url)


def flush_redis(target: Target) -> None:
    """Empty the benchmark's Redis db: only while none of its workers runs (kombu's queue
    bindings live there too)."""
    broker(target).flushdb()


def clear_gate(target: Target) -> None:
    """Forget the rate-limit slot, the pauses and the call log (between runs)."""
    client = broker(target)
    keys = list(client.scan_iter(GATE_PATTERN))
    if keys:
        client.delete(*keys)


def queue_idle(target: Target) -> bool:
    """No message waits in the broker and none is held unacknowledged by a worker."""
    client = broker(target)
    queued = sum(client.llen(key) for key in client.scan_iter("celery*"))
    return queued == 0 and client.hlen("unacked") == 0


def wait_idle(target: Target, timeout: float = 120) -> float:
    """Wait until the broker is idle; returns the seconds it took."""
    start = time.monotonic()
    while not queue_idle(target):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"broker not idle within {timeout:g}s")
        time.sleep(0.1)
    return time.monotonic() - start


def versions(target: Target) -> dict[str, Any]:
    with psycopg.connect(target.server_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "postgresql": row[0] if row else "?",
        "redis": broker(target).info("server").get("redis_version", "?"),
    }
