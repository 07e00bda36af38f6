"""The machinery under the business: database, Redis (broker and fleet gate), Celery workers
and the periodic sweep, each probed with short timeouts so a dead part turns the dashboard
red in well under a second instead of hanging the page.

The broker is asked once, through a client with OPS_PROBE_TIMEOUT_SECONDS timeouts; when it
does not answer, nothing else that needs it (worker ping, pauses, call rate) is attempted.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache as django_cache
from django.db import DatabaseError, connection

from .. import selectors
from ..gate import limiter
from ..services.broker import SWEEP_KEY

log = logging.getLogger(__name__)

# kombu's Redis transport keeps one list per priority step: "celery", "celery\x06\x163", …
PRIORITY_SEPARATOR, PRIORITY_STEPS = "\x06\x16", (3, 6, 9)
UNACKED_KEY = "unacked"  # kombu: messages handed to a worker (running, or held for an ETA)
KNOWN_WORKERS_KEY, FULL_PING_KEY = "ops:known_workers", "ops:full_ping_done"
FULL_PING_EVERY_SECONDS = 30


def timeout() -> float:
    return settings.OPS_PROBE_TIMEOUT_SECONDS


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def database() -> dict[str, Any]:
    """Whether the database answers SELECT 1, and how fast."""
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as err:
        return {"ok": False, "ms": _elapsed_ms(started), "error": type(err).__name__}
    return {"ok": True, "ms": _elapsed_ms(started), "error": ""}


@cache
def _client(url: str, seconds: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=seconds, socket_connect_timeout=seconds)


def broker() -> dict[str, Any]:
    """One round trip to the fleet's Redis (REDIS_URL): ping, the sweep's heartbeat and, when
    it is the broker too, the queue's length and the messages held by workers. `ok` is False
    (with the error's type) when Redis does not answer."""
    queue = _default_queue()
    is_broker = settings.REDIS_URL == settings.CELERY_BROKER_URL
    keys = [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]
    started = time.monotonic()
    try:
        pipe = _client(settings.REDIS_URL, timeout()).pipeline(transaction=False)
        pipe.ping()
        pipe.get(SWEEP_KEY)
        if is_broker:
            for key in keys:
                pipe.llen(key)
            pipe.hlen(UNACKED_KEY)
        _, sweep, *lengths = pipe.execute()
    except (redis.RedisError, OSError) as err:
        return {"ok": False, "ms": _elapsed_ms(started), "error": type(err).__name__}
    return {
        "ok": True,
        "ms": _elapsed_ms(started),
        "error": "",
        "queue": queue,
        "queue_length": sum(lengths[:-1]) if is_broker else None,
        "unacked": lengths[-1] if is_broker else None,
        "sweep": selectors.parse_sweep_record(sweep),
    }


def _default_queue() -> str:
    from project.celery import app

    return app.conf.task_default_queue or "celery"


def workers() -> dict[str, Any]:
    """Celery workers answering a broadcast ping within the probe timeout.

    A ping without a limit always waits the whole timeout for stragglers; so between full
    pings (every FULL_PING_EVERY_SECONDS) it stops as soon as the workers seen last time
    have answered, and a missing one still costs only the timeout."""
    known = django_cache.get(KNOWN_WORKERS_KEY)
    full = django_cache.add(FULL_PING_KEY, True, FULL_PING_EVERY_SECONDS) or not known
    started = time.monotonic()
    try:
        replies = _ping(limit=None if full else known)
    except Exception as err:  # kombu's errors vary by transport
        return {"ok": False, "count": 0, "names": [], "error": type(err).__name__}
    names = sorted(name for reply in replies for name in reply)
    if full or len(names) < known:
        django_cache.set(KNOWN_WORKERS_KEY, len(names), None)
    return {"ok": bool(names), "count": len(names), "names": names, "ms": _elapsed_ms(started)}


def _ping(limit: int | None) -> list[dict[str, Any]]:
    """Ping on a connection of its own. After a wait that timed out, kombu's Redis channel
    still has a BRPOP pending and closing it waits for that: it is closed off the request
    path, and no pooled connection is left in that state."""
    from project.celery import app

    conn = app.connection_for_write()
    try:
        return app.control.ping(timeout=timeout(), limit=limit, connection=conn)
    finally:
        threading.Thread(target=conn.release, name="ops-ping-close", daemon=True).start()


def sweep_state(recorded: dict[str, Any] | None) -> dict[str, Any]:
    """When the sweep last ran; stale after three missed runs (at least a minute)."""
    stale_after = max(3 * settings.COLLECTIONS_SWEEP_INTERVAL_SECONDS, 60)
    if recorded is None:
        return {"ok": False, "last_run_at": None, "age_seconds": None, "stale_after": stale_after}
    age = max(time.time() - recorded["at"], 0.0)
    return {
        "ok": age <= stale_after,
        "last_run_at": datetime.fromtimestamp(recorded["at"], UTC),
        "age_seconds": round(age, 1),
        "stale_after": stale_after,
        "orphaned": recorded.get("orphaned"),
        "requeued": recorded.get("requeued"),
    }


def gate_state() -> dict[str, Any]:
    """Pauses in force (why, and until when), the configured rate limit and the measured rate."""
    pauses = [
        {
            "kind": p.kind,
            "until": p.until_time,
            "seconds_left": max((p.until - time.time()), 0.0),
            "reason": p.reason,
            "message": p.message,
        }
        for p in selectors.active_pauses()
    ]
    try:
        rate: float | None = round(limiter.call_rate(), 2)
    except Exception as err:  # Redis went away between the probe and here
        log.warning("cannot read the call rate: %s", type(err).__name__)
        rate = None
    return {"pauses": pauses, "rate_limit": settings.UTILITYAPI_RATE_LIMIT, "call_rate": rate}


def machinery() -> dict[str, Any]:
    """Every probe; the ones needing the broker are skipped (and red) when it is down."""
    redis_state = broker()
    recorded, up = redis_state.pop("sweep", None), redis_state["ok"]
    no_broker = {"ok": False, "count": 0, "names": [], "error": "no broker"}
    return {
        "database": database(),
        "redis": redis_state,
        "workers": workers() if up else no_broker,
        "sweep": sweep_state(recorded),
        "gate": gate_state() if up else gate_state_unknown(),
    }


def gate_state_unknown() -> dict[str, Any]:
    """What is known of the gate when Redis, which holds it, does not answer."""
    return {"pauses": None, "rate_limit": settings.UTILITYAPI_RATE_LIMIT, "call_rate": None}
