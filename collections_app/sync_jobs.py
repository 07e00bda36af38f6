"""The meter registry's sync as a background job: queue it (one at a time), and read its
progress from the task result (django-celery-results) for the admin's "Sync meters now".

The id of the sync in flight is kept in Redis (SET NX with a TTL a little past the task's
time limit), so a second click shows the running sync instead of queuing another; the task
clears it when it ends.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery.result import AsyncResult

from . import redis_state
from .models import Meter

log = logging.getLogger(__name__)
RUNNING_KEY = "collections:meters:sync"
RUNNING_TTL_SECONDS = 1900  # tasks.sync_meters has a 1860 s hard time limit


def queue_sync() -> str:
    """Queue a sync unless one is in flight; returns the id of the sync to follow."""
    from .tasks import sync_meters  # tasks import this module

    task_id = str(uuid.uuid4())
    conn = redis_state.connection()
    if not conn.set(RUNNING_KEY, task_id, nx=True, ex=RUNNING_TTL_SECONDS):
        in_flight = running()
        if in_flight:
            return in_flight
        conn.set(RUNNING_KEY, task_id, ex=RUNNING_TTL_SECONDS)  # it ended in between
    sync_meters.apply_async(task_id=task_id)
    return task_id


def queue_sync_if_empty() -> str | None:
    """At start: an empty registry gets one sync in the background (beat's schedule would
    wait an interval). Never raises: a start-up must not fail on it."""
    try:
        if Meter.objects.exists():
            return None
        task_id = queue_sync()
    except Exception as err:  # the database or Redis not reachable yet
        log.warning("meter sync at start not queued: %s", err)
        return None
    log.info("meter registry is empty: sync %s queued", task_id)
    return task_id


def running() -> str | None:
    """The id of the sync in flight, if any (None also when Redis cannot be asked)."""
    try:
        value = redis_state.connection().get(RUNNING_KEY)
    except redis.RedisError:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return value or None


def finished(task_id: str) -> None:
    """Called by the task as it ends: forget it, unless a newer sync took its place."""
    try:
        conn = redis_state.connection()
        if conn.get(RUNNING_KEY) == task_id.encode():
            conn.delete(RUNNING_KEY)
    except redis.RedisError as err:
        log.warning("meter sync %s: cannot clear its running mark (%s)", task_id, err)


@dataclass(frozen=True)
class Progress:
    """What the admin shows of one sync: `state` is queued, running, done or failed."""

    state: str
    message: str
    counts: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "message": self.message, "counts": self.counts}


def progress(task_id: str) -> Progress:
    """The sync's state from its task result (PROGRESS carries the counts so far)."""
    result = AsyncResult(task_id)
    info = result.info if isinstance(result.info, dict) else {}
    if result.state == "PROGRESS":
        return Progress("running", _so_far(info), info)
    if result.state == "SUCCESS":
        return Progress("done", f"Synced {_counts(info)}.", info)
    if result.state in ("FAILURE", "REVOKED"):
        return Progress("failed", f"Meter sync failed: {result.info}", {})
    return Progress("queued", "Meter sync queued: waiting for a worker…", {})


def _so_far(counts: dict[str, Any]) -> str:
    return f"Syncing… {counts.get('seen', 0):,} meter(s) read in {counts.get('pages', 0)} page(s)."


def _counts(counts: dict[str, Any]) -> str:
    return (
        f"{counts.get('seen', 0):,} meter(s) in {counts.get('pages', 0)} page(s): "
        f"{counts.get('created', 0):,} new, {counts.get('updated', 0):,} updated; "
        f"{counts.get('authorizations', 0):,} authorization(s) read first"
    )
