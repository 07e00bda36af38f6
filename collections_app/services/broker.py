"""Telling workers there is due work. The row is the record of work to do (a transactional
outbox): storing a request is one INSERT and no broker call. A relay in every worker
(collections_app.relay) announces due rows on the broker, one message per POST they need,
and the periodic sweep is the safety net for rows whose worker died or whose message was
lost."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Min, Q, QuerySet
from django.utils import timezone

from .. import redis_state
from ..models import CollectionRequest, Status

log = logging.getLogger(__name__)
ANNOUNCE_ROWS = 30_000  # due rows one relay round marks at most
MAX_MESSAGES = 64  # messages one round publishes at most: each task drains until no row is due
CHUNK = 5_000  # ids per UPDATE … WHERE id IN (…)
DELIVER_TASK = "collections_app.tasks.deliver"  # by name: services never import the tasks
# When the sweep last ran, for the dashboard: beat schedules it and a worker runs it, so a
# recent run says both are alive (django_celery_beat writes last_run_at back too seldom).
SWEEP_KEY = "collections:ops:sweep_last_run"


def free(now: datetime) -> Q:
    """Rows no worker holds: never leased, or the lease ran out."""
    return Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)


def due(now: datetime) -> QuerySet[CollectionRequest]:
    """Submitted rows whose next attempt is due and that no worker holds."""
    rows = CollectionRequest.objects.filter(status=Status.SUBMITTED, next_attempt_at__lte=now)
    return rows.filter(free(now))


def announce_due() -> tuple[int, float | None]:
    """Mark the due rows nobody has been told about, then publish one message per POST they
    need (at most MAX_MESSAGES: each task goes on claiming until no row is due). Returns the
    messages sent and the seconds until the next row falls due (None: none is scheduled)."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            due(now)
            .filter(announced_at__isnull=True)
            .order_by("next_attempt_at")
            .select_for_update(skip_locked=True)
            .values_list("pk", "collection_duration", "meters")[:ANNOUNCE_ROWS]
        )
        _update([pk for pk, _, _ in rows], announced_at=now)
    wanted = posts_needed(((d, len(m)) for _, d, m in rows), most=MAX_MESSAGES)
    sent = publish(wanted)
    if wanted and not sent:  # the broker is down: the next round tries again
        _update([pk for pk, _, _ in rows], announced_at=None)
    return sent, seconds_until_next_due(now)


def posts_needed(rows: Iterable[tuple[Any, int]], most: int | None = None) -> int:
    """POSTs that rows of (duration, meter count) take when coalesced as the claim does: a
    claim fills its POST with the oldest rows that fit, so each row goes to the first POST
    with room for it. Counting stops at `most`."""
    cap = settings.COLLECTIONS_BATCH_MAX_METERS
    rooms: dict[Any, list[int]] = {}  # per duration: the room left in each POST not yet full
    posts = 0
    for duration, meters in rows:
        room = rooms.setdefault(duration, [])
        fit = next((i for i, left in enumerate(room) if left >= meters), None)
        if fit is None:
            posts += 1
            if posts == most:
                break
            fit = len(room)
            room.append(cap)
        room[fit] -= meters
        if room[fit] <= 0:
            del room[fit]
    return posts


def seconds_until_next_due(now: datetime) -> float | None:
    later = CollectionRequest.objects.filter(
        status=Status.SUBMITTED, next_attempt_at__gt=now, announced_at__isnull=True
    ).aggregate(at=Min("next_attempt_at"))["at"]
    return None if later is None else (later - now).total_seconds()


def publish(count: int) -> int:
    """Publish `count` "deliver due work" messages; returns how many went out. A broker
    error is logged, never raised: the rows stay due and are announced again."""
    from celery import current_app

    sent = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for _ in range(count):
                current_app.send_task(DELIVER_TASK, producer=producer)
                sent += 1
    except Exception as err:  # kombu/redis errors vary by transport
        log.warning("broker unavailable (%s): due work waits for it", type(err).__name__)
    return sent


def requeue(pks: Sequence[Any]) -> None:
    """Have the relays announce these rows again. next_attempt_at is written too, unchanged,
    so PostgreSQL's trigger on it wakes the relays at once."""
    _update(pks, announced_at=None, next_attempt_at=F("next_attempt_at"))


def _update(pks: Sequence[Any], **values: Any) -> None:
    for i in range(0, len(pks), CHUNK):
        CollectionRequest.objects.filter(pk__in=pks[i : i + CHUNK]).update(**values)


def sweep() -> dict[str, int]:
    """Free rows whose worker died holding them, and announce again due rows whose message
    was lost (announced longer than COLLECTIONS_STUCK_AFTER_SECONDS ago, still unclaimed)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.COLLECTIONS_STUCK_AFTER_SECONDS)
    submitted = CollectionRequest.objects.filter(status=Status.SUBMITTED)
    orphaned = list(submitted.filter(lease_expires_at__lt=now).values_list("pk", flat=True))
    submitted.filter(pk__in=orphaned, lease_expires_at__lt=now).update(
        lease_token=None, lease_expires_at=None
    )
    forgotten = due(now).filter(announced_at__lt=stale).values_list("pk", flat=True)
    ids = list(dict.fromkeys([*orphaned, *forgotten[:ANNOUNCE_ROWS]]))
    requeue(ids)
    if ids:
        log.info("sweep: %d orphaned, %d announced again", len(orphaned), len(ids))
    result = {"orphaned": len(orphaned), "requeued": len(ids)}
    _record_sweep(result)
    return result


def _record_sweep(result: dict[str, int]) -> None:
    """Note that the sweep ran now; a Redis error never fails the sweep itself."""
    value = json.dumps({"at": time.time(), **result})
    try:
        redis_state.connection().set(SWEEP_KEY, value, ex=86_400)
    except Exception as err:  # redis errors vary; the record is only for the dashboard
        log.warning("cannot record the sweep's run: %s", type(err).__name__)
