"""Claims and outcomes: lease due rows (with coalesced companions), defer them, and apply
the retry policy to what one POST answered."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from ..client import Accepted
from ..exceptions import PermanentError, Throttled, UtilityAPIError
from ..models import Attempt, CollectionRequest, Status
from . import tracking
from .broker import _dispatch_on_commit
from .transitions import transition

log = logging.getLogger(__name__)
LOOKAHEAD = 100  # due rows looked at past the meter budget, for smaller ones that still fit


def lease_seconds() -> float:
    return (
        settings.UTILITYAPI_CONNECT_TIMEOUT
        + settings.UTILITYAPI_READ_TIMEOUT
        + settings.COLLECTIONS_LEASE_MARGIN_SECONDS
    )


def claim(
    request_id: Any, task_id: str, row: CollectionRequest | None = None
) -> list[CollectionRequest]:
    """Lease the request if it is due and free, with the due, free requests of the same
    duration that fit in one POST (coalescing). Empty when another worker has it.

    `row` is the request as the caller has just read it. The lease is taken only if the row
    has not been saved since (same `updated`), so the batch needs no second read; without
    companions (coalescing off) the claim is a single UPDATE."""
    import uuid

    own = row or CollectionRequest.objects.filter(pk=request_id).first()
    if own is None:
        return []
    now = timezone.now()
    lease = {
        "lease_token": uuid.uuid4(),
        "lease_expires_at": now + timedelta(seconds=lease_seconds()),
        "task_id": task_id,
    }
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    due = CollectionRequest.objects.filter(free, status=Status.SUBMITTED, next_attempt_at__lte=now)
    coalescing = len(own.meters) < settings.COLLECTIONS_BATCH_MAX_METERS
    with transaction.atomic() if coalescing else contextlib.nullcontext():
        if not due.filter(pk=own.pk, updated=own.updated).update(**lease):
            return []
        companions = _companions(due.exclude(pk=own.pk), own) if coalescing else []
        due.filter(pk__in=companions).update(**lease)
    batch = [own, *CollectionRequest.objects.filter(pk__in=companions)] if companions else [own]
    for request in batch:
        for name, value in lease.items():
            setattr(request, name, value)
    return sorted(batch, key=lambda request: request.created)


def _companions(due: Any, own: CollectionRequest) -> list[Any]:
    room = settings.COLLECTIONS_BATCH_MAX_METERS - len(own.meters)
    if room <= 0:
        return []
    rows = (
        due.filter(collection_duration=own.collection_duration)
        .order_by("next_attempt_at")
        .select_for_update(skip_locked=True)
        .values_list("pk", "meters")[: room + LOOKAHEAD]
    )
    picked = []
    for pk, meters in rows:
        if len(meters) <= room:
            picked.append(pk)
            room -= len(meters)
    return picked


def renew(batch: Sequence[CollectionRequest]) -> None:
    """Make the lease cover the POST about to start. A lease taken moments ago still covers
    it with most of its margin: then nothing is written (the common case, one query saved)."""
    now = timezone.now()
    until = now + timedelta(seconds=lease_seconds())
    held = batch[0].lease_expires_at
    spare = timedelta(seconds=settings.COLLECTIONS_LEASE_MARGIN_SECONDS / 2)
    if held is not None and held >= until - spare:
        return
    CollectionRequest.objects.filter(
        pk__in=[r.pk for r in batch], lease_token=batch[0].lease_token
    ).update(lease_expires_at=until)
    for request in batch:
        request.lease_expires_at = until


def defer(batch: Sequence[CollectionRequest], seconds: float) -> None:
    """Give back claimed rows without an attempt: they wait `seconds` (a pause, no slot)."""
    when = timezone.now() + timedelta(seconds=seconds)
    for request in batch:
        current = request.next_attempt_at or when
        transition(request, Status.SUBMITTED, next_attempt_at=max(when, current))
    with transaction.atomic():
        _save_and_schedule(batch, ["next_attempt_at"])


@dataclass(frozen=True)
class Call:
    """What one POST was: for the attempt rows it leaves."""

    call_id: Any
    started: datetime
    duration_ms: int
    task_id: str


def record_split(batch: Sequence[CollectionRequest], err: UtilityAPIError, call: Call) -> None:
    """A batch refused as a whole (400): log the attempt; the caller retries the halves."""
    note = f"{err.description} (batch of {len(batch)} split to find the bad request)"
    _log_attempts(batch, call, err, note)


def record_outcome(
    batch: Sequence[CollectionRequest], outcome: Accepted | UtilityAPIError, call: Call
) -> None:
    """Apply the retry policy to every request that one POST carried, and save."""
    now = timezone.now()
    with transaction.atomic():
        _log_attempts(batch, call, outcome)
        for request in batch:
            _apply(request, outcome, now)
        _save_and_schedule(batch, OUTCOME_FIELDS)
        tracking.begin(batch)  # follow the accepted meters' collection to its end


OUTCOME_FIELDS = [
    "status",
    "attempts",
    "next_attempt_at",
    "error",
    "error_description",
    "last_http_status",
    "accepted_meters",
    "ignored_meters",
]


def _log_attempts(
    batch: Sequence[CollectionRequest], call: Call, outcome: Any, note: str = ""
) -> None:
    err = outcome if isinstance(outcome, UtilityAPIError) else None
    Attempt.objects.bulk_create(
        Attempt(
            request=request,
            call_id=call.call_id,
            batch_size=len(batch),
            started=call.started,
            duration_ms=call.duration_ms,
            status_code=err.status_code if err else 200,
            retry_after_seconds=err.retry_after if isinstance(err, Throttled) else None,
            error=err.error if err else "",
            error_description=note or (err.description if err else ""),
            task_id=call.task_id,
        )
        for request in batch
    )


def _apply(request: CollectionRequest, outcome: Accepted | UtilityAPIError, now: datetime) -> None:
    if isinstance(outcome, Accepted):
        return _accept(request, outcome)
    request.last_http_status = outcome.status_code
    if isinstance(outcome, Throttled):  # waits for Retry-After; not counted as an attempt
        when = now + timedelta(seconds=outcome.retry_after or 0)
        return transition(
            request,
            Status.SUBMITTED,
            next_attempt_at=when,
            error=outcome.error,
            error_description=outcome.description,
        )
    request.attempts += 1
    if isinstance(outcome, PermanentError):
        return transition(
            request,
            Status.FAILED,
            next_attempt_at=None,
            error=outcome.error,
            error_description=outcome.description,
        )
    if request.attempts >= settings.COLLECTIONS_MAX_ATTEMPTS:
        return transition(
            request,
            Status.FAILED,
            next_attempt_at=None,
            error="retries_exhausted",
            error_description=f"Gave up after {request.attempts} attempts; the "
            f"last: {outcome.error}: {outcome.description}",
        )
    when = now + timedelta(seconds=backoff(request.attempts))
    transition(
        request,
        Status.SUBMITTED,
        next_attempt_at=when,
        error=outcome.error,
        error_description=outcome.description,
    )


def _accept(request: CollectionRequest, outcome: Accepted) -> None:
    triggered = set(outcome.meters)
    accepted = [m for m in request.meters if m in triggered]
    ignored = [m for m in request.meters if m not in triggered]
    request.attempts += 1
    request.last_http_status = 200
    if not accepted:  # alone, UtilityAPI would have answered 400 expired_or_revoked
        return transition(
            request,
            Status.FAILED,
            next_attempt_at=None,
            ignored_meters=ignored,
            accepted_meters=[],
            error="expired_or_revoked",
            error_description="UtilityAPI dropped every meter of this request: "
            "their authorizations are revoked or expired.",
        )
    transition(
        request,
        Status.PENDING,
        next_attempt_at=None,
        accepted_meters=accepted,
        ignored_meters=ignored,
        error="",
        error_description="",
    )


def backoff(attempts: int) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random, capped."""
    step = min(
        settings.COLLECTIONS_RETRY_MAX_SECONDS,
        settings.COLLECTIONS_RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0),
    )
    return step / 2 + random.uniform(0, step / 2)


def _still_held(batch: Sequence[CollectionRequest]) -> list[CollectionRequest]:
    """The rows of `batch` still leased to it, locked until the caller's transaction ends.
    A worker that outlived its lease (frozen, or slower than its timeouts) finds its rows
    taken over by the sweep and another worker: their newer state must stand."""
    token = batch[0].lease_token if batch else None
    held = set(
        CollectionRequest.objects.select_for_update()
        .filter(pk__in=[r.pk for r in batch], lease_token=token)
        .values_list("pk", flat=True)
    )
    if len(held) < len(batch):
        log.warning("lease lost: %d stale outcome(s) not saved", len(batch) - len(held))
    return [r for r in batch if r.pk in held]


def _update_rows(batch: Sequence[CollectionRequest], fields: list[str], token: Any) -> bool:
    """Write `fields` of the batch's rows; False when a single row's lease was lost.

    A single row (every send when coalescing is off) takes one UPDATE that checks its lease
    too. Several rows (checked by _still_held) take one UPDATE per group of rows with the same
    values: a coalesced batch is mostly one group. (bulk_update wrote a CASE per field and row:
    for a batch of 1,000, 2 s of CPU in the worker and a quadratic UPDATE in the database.)"""
    if len(batch) != 1:
        groups: dict[str, tuple[dict[str, Any], list[Any]]] = {}
        for row in batch:
            values = _values(row, fields)
            groups.setdefault(repr(sorted(values.items())), (values, []))[1].append(row.pk)
        for values, pks in groups.values():
            CollectionRequest.objects.filter(pk__in=pks).update(**values)
        return True
    row = batch[0]
    held = CollectionRequest.objects.filter(pk=row.pk, lease_token=token)
    if held.update(**_values(row, fields)):
        return True
    log.warning("lease lost: 1 stale outcome(s) not saved")
    return False


def _values(row: CollectionRequest, fields: list[str]) -> dict[str, Any]:
    """The row's values for `fields`, written so that alike rows share them: a finished row's
    dispatched_at (unchanged, and read only for submitted rows) is left out, and accepted
    meters that are all of the request's meters are written as F("meters")."""
    done = row.status != Status.SUBMITTED
    values = {f: getattr(row, f) for f in fields if not (done and f == "dispatched_at")}
    if row.meters and values.get("accepted_meters") == row.meters:
        values["accepted_meters"] = F("meters")
    return values


def _save_and_schedule(batch: Sequence[CollectionRequest], fields: list[str]) -> None:
    """Save the batch, free its lease, and make sure each still-submitted row is looked at
    again when due: by a broker countdown for short waits, by the sweep for long ones."""
    token = batch[0].lease_token if batch else None
    batch = _still_held(batch) if len(batch) > 1 else batch
    now = timezone.now()
    for request in batch:
        request.lease_token = request.lease_expires_at = None
        request.updated = now
    later = [r for r in batch if r.status == Status.SUBMITTED]
    for request in later:
        request.dispatched_at = None  # the sweep's job unless a countdown is sent below
    saved = [*fields, "lease_token", "lease_expires_at", "dispatched_at", "updated"]
    if not _update_rows(batch, saved, token):
        return
    # One countdown for the rows due within the broker horizon: the latest of them, so that
    # when it arrives they are all due and one claim takes them together.
    waits = {r.pk: ((r.next_attempt_at or now) - now).total_seconds() for r in later}
    soon = [
        pk
        for pk, wait in waits.items()
        if wait <= settings.COLLECTIONS_BROKER_COUNTDOWN_MAX_SECONDS
    ]
    if soon:
        _dispatch_on_commit(soon, countdown=max(max(waits[pk] for pk in soon), 0.001))
