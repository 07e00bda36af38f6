"""The callback outbox: one CallbackDelivery row per attempt to tell a request's callback_url
about a moment. The first is stored in the transaction that reached the moment (so a crash
after commit loses nothing); a worker claims due rows with FOR UPDATE SKIP LOCKED and a lease
(no attempt is sent twice); a failed attempt stores the next one, with exponential backoff and
jitter, until COLLECTIONS_CALLBACK_GIVE_UP_SECONDS after the moment."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone

from .. import redis_state
from ..callbacks import Answer
from ..models import CallbackDelivery

log = logging.getLogger(__name__)
TASK = "collections_app.tasks.deliver_callbacks"  # by name: services never import the tasks
LEASE_SECONDS = 30  # a claimed attempt's hold: well past the POST's timeouts
MAX_STEP_SECONDS = 3600  # the backoff's cap
FOLLOW_UP_KEY = "collections:callbacks:follow_up"  # set while a follow-up message waits
MIN_FOLLOW_UP_SECONDS = 0.5  # a follow-up never comes sooner: no task loops on a busy row


def queue(request_ids: Sequence[Any], moment: str) -> list[Any]:
    """Store the first attempt of `moment` for each request (they have a callback_url), due
    now, inside the caller's transaction; a worker is asked to send them once it commits.
    Returns the attempts' ids."""
    if not request_ids:
        return []
    now = timezone.now()
    rows = CallbackDelivery.objects.bulk_create(
        CallbackDelivery(request_id=pk, moment=moment, moment_at=now, next_attempt_at=now)
        for pk in request_ids
    )
    connection = transaction.get_connection()
    if not any(hook is kick for _, hook, _ in connection.run_on_commit):
        transaction.on_commit(kick, robust=True)  # once per transaction: one task sends them all
    return [row.pk for row in rows]


def kick(countdown: float = 0) -> None:
    """Ask a worker to send due callbacks (in `countdown` seconds); a broker error is logged:
    beat's periodic run sends them later."""
    from celery import current_app

    try:
        current_app.send_task(TASK, countdown=countdown or None)
    except Exception as err:  # kombu/redis errors vary by transport
        log.warning("broker unavailable (%s): callbacks wait for the periodic run", err)


def follow_up() -> None:
    """Have a worker come back when the next retry falls due, if that is sooner than beat's
    next periodic run; one such message waits at a time (a Redis key that lives as long)."""
    wait = seconds_until_next_due()
    if wait is None or wait >= settings.COLLECTIONS_SWEEP_INTERVAL_SECONDS:
        return
    try:
        wait = max(wait, MIN_FOLLOW_UP_SECONDS)
        if redis_state.connection().set(FOLLOW_UP_KEY, "1", nx=True, px=int(wait * 1000)):
            kick(countdown=wait)
    except Exception as err:  # redis errors vary; beat's periodic run is the safety net
        log.warning("cannot schedule the callbacks' follow-up: %s", type(err).__name__)


def free(now: datetime) -> Q:
    """Attempts no worker holds: never claimed, or the claim ran out."""
    return Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)


def due(now: datetime) -> Any:
    """Attempts not yet tried, due, and held by no worker."""
    return CallbackDelivery.objects.filter(free(now), tried_at=None, next_attempt_at__lte=now)


def claim() -> CallbackDelivery | None:
    """Lease the oldest due attempt (one short transaction; rows being claimed elsewhere are
    skipped, never waited for); None when nothing is due."""
    now = timezone.now()
    with transaction.atomic():
        row = due(now).order_by("next_attempt_at").select_for_update(skip_locked=True).first()
        if row is None:
            return None
        row.lease_expires_at = now + timedelta(seconds=LEASE_SECONDS)
        row.save(update_fields=["lease_expires_at"])
    return row


def record(row: CallbackDelivery, answer: Answer, body_sha256: str) -> None:
    """Keep what the attempt got; unless delivered, store the next attempt, or give up once
    it would fall past COLLECTIONS_CALLBACK_GIVE_UP_SECONDS after the moment."""
    now = timezone.now()
    later = now + timedelta(seconds=backoff(row.attempt))
    give_up = later > row.moment_at + timedelta(
        seconds=settings.COLLECTIONS_CALLBACK_GIVE_UP_SECONDS
    )
    fields = {
        "tried_at": now,
        "next_attempt_at": None,
        "lease_expires_at": None,
        "status_code": answer.status_code,
        "duration_ms": answer.duration_ms,
        "error": answer.error[:64],
        "error_description": answer.description,
        "body_sha256": body_sha256,
        "delivered_at": now if answer.delivered else None,
        "gave_up": not answer.delivered and give_up,
    }
    with transaction.atomic():
        if not CallbackDelivery.objects.filter(pk=row.pk, tried_at=None).update(**fields):
            return  # recorded already (this worker outlived its lease)
        if answer.delivered:
            return
        if give_up:
            log.warning(
                "callback %s of %s: gave up after %d attempts",
                row.moment,
                row.request_id,
                row.attempt,
            )
            return
        CallbackDelivery.objects.create(
            request_id=row.request_id,
            event_id=row.event_id,
            moment=row.moment,
            moment_at=row.moment_at,
            attempt=row.attempt + 1,
            next_attempt_at=later,
        )


def backoff(attempt: int) -> float:
    """Seconds before the attempt after `attempt`: doubling from the base, capped at an hour,
    half of it random (equal jitter)."""
    base = settings.COLLECTIONS_CALLBACK_RETRY_BASE_SECONDS
    step = min(MAX_STEP_SECONDS, base * 2 ** max(attempt - 1, 0))
    return step / 2 + random.uniform(0, step / 2)


def seconds_until_next_due() -> float | None:
    """Until the next untried attempt no worker holds falls due (0 if one is due now); None:
    none waits. (A held one is its sender's to record, and to follow up.)"""
    now = timezone.now()
    waiting = CallbackDelivery.objects.filter(free(now), tried_at=None)
    at = waiting.aggregate(at=Min("next_attempt_at"))["at"]
    return None if at is None else max((at - now).total_seconds(), 0.0)
