"""/readyz: whether this process can serve: the database answers, its migrations are all
applied, and the fleet's Redis (REDIS_URL) answers. Each check runs on a thread of its own
and the answer comes within DEADLINE_SECONDS whatever hangs; a check that has not finished
by then counts as failed ("timed out").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

log = logging.getLogger(__name__)
DEADLINE_SECONDS = 1.5
# Threads for the checks; a check stuck on a dead host holds one until its socket gives up.
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


def database() -> dict[str, Any]:
    """SELECT 1, then the migrations not yet applied (its own connection, closed after)."""
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connection.close()
    return {"unapplied_migrations": [f"{m.app_label}.{m.name}" for m, _ in plan]}


def redis_ping() -> dict[str, Any]:
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=DEADLINE_SECONDS,
        socket_connect_timeout=DEADLINE_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()
    return {}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {"database": database, "redis": redis_ping}


def check() -> dict[str, Any]:
    """{"ready": bool, "failed": [names], "checks": {name: {"ok", "error", ...}}}."""
    futures = {name: _pool.submit(run) for name, run in CHECKS.items()}
    wait(futures.values(), timeout=DEADLINE_SECONDS)
    results = {name: _result(future) for name, future in futures.items()}
    unapplied = results["database"].get("unapplied_migrations")
    results["migrations"] = (
        {"ok": not unapplied, "error": f"{len(unapplied)} not applied" if unapplied else ""}
        if unapplied is not None
        else {"ok": False, "error": "database unavailable"}
    )
    failed = [name for name, result in results.items() if not result["ok"]]
    return {"ready": not failed, "failed": failed, "checks": results}


def _result(future: Any) -> dict[str, Any]:
    if not future.done():
        future.cancel()
        return {"ok": False, "error": f"timed out after {DEADLINE_SECONDS:g} s"}
    error = future.exception()
    if error is not None:  # the type only: the message may name hosts and users
        log.warning("readiness check failed: %s", error)
        return {"ok": False, "error": type(error).__name__}
    return {"ok": True, "error": "", **future.result()}
