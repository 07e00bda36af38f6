"""The broker carries only "look at row X now": dispatch, and the sweep that finds rows
whose message was lost or never sent."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import redis_state
from ..models import CollectionRequest, Status

log = logging.getLogger(__name__)
SWEEP_BATCH = 5000  # rows the sweep dispatches at most per run
# When the sweep last ran, for the dashboard: beat schedules it and a worker runs it, so a
# recent run says both are alive (django_celery_beat writes last_run_at back too seldom).
SWEEP_KEY = "collections:ops:sweep_last_run"


def _dispatch_on_commit(ids: list[Any], countdown: float = 0.0) -> None:
    if ids:
        transaction.on_commit(lambda: dispatch(ids, countdown))


def dispatch(ids: Sequence[Any], countdown: float = 0.0) -> int:
    """Send "look at row X" messages. If the broker is down the rows stay due, and the
    sweep sends them later: nothing is lost. Returns how many were sent."""
    from ..tasks import send_collection

    if countdown <= 0 and settings.COLLECTIONS_BATCH_MAX_METERS > 1:
        # Coalescing: a fresh request waits the window for others due with it to share its
        # POST. With coalescing off the wait would buy nothing (and each message would go
        # through the worker's ETA timer instead of straight to a thread).
        countdown = settings.COLLECTIONS_COALESCE_WINDOW_MS / 1000
    sent: list[Any] = []
    try:
        for pk in ids:
            send_collection.apply_async((str(pk),), countdown=countdown or None)
            sent.append(pk)
    except Exception as err:  # kombu/redis errors vary by transport: log and leave to the sweep
        log.warning(
            "broker unavailable (%s): %d request(s) wait for the sweep",
            type(err).__name__,
            len(ids) - len(sent),
        )
    due = timezone.now() + timedelta(seconds=countdown)
    for chunk in _chunks(sent, 1000):
        CollectionRequest.objects.filter(pk__in=chunk).update(dispatched_at=due)
    return len(sent)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def sweep() -> dict[str, int]:
    """Free rows whose worker died holding them, and re-dispatch due rows whose message was
    lost or never sent (a broker outage, or a wait too long for a broker countdown)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.COLLECTIONS_STUCK_AFTER_SECONDS)
    submitted = CollectionRequest.objects.filter(status=Status.SUBMITTED)
    orphaned = list(submitted.filter(lease_expires_at__lt=now).values_list("pk", flat=True))
    submitted.filter(pk__in=orphaned, lease_expires_at__lt=now).update(
        lease_token=None, lease_expires_at=None
    )
    due = submitted.filter(next_attempt_at__lte=now, lease_expires_at__isnull=True)
    forgotten = due.filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
    ids = list(dict.fromkeys([*orphaned, *forgotten.values_list("pk", flat=True)[:SWEEP_BATCH]]))
    sent = dispatch(ids) if ids else 0
    if ids:
        log.info("sweep: %d orphaned, %d re-dispatched", len(orphaned), sent)
    result = {"orphaned": len(orphaned), "dispatched": sent}
    _record_sweep(result)
    return result


def _record_sweep(result: dict[str, int]) -> None:
    """Note that the sweep ran now; a Redis error never fails the sweep itself."""
    value = json.dumps({"at": time.time(), **result})
    try:
        redis_state.connection().set(SWEEP_KEY, value, ex=86_400)
    except Exception as err:  # redis errors vary; the record is only for the dashboard
        log.warning("cannot record the sweep's run: %s", type(err).__name__)
