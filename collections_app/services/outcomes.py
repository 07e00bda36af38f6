"""Outcomes: record what one call answered for every request it carried (attempt rows, the
policy's verdict), or give claimed rows back untried; only the lease holder's write lands."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..client import Accepted
from ..exceptions import Throttled, UtilityAPIError
from ..models import Attempt, CollectionRequest, Status
from . import notices, policy, tracking
from .leases import still_held
from .transitions import transition

log = logging.getLogger(__name__)


def defer(batch: Sequence[CollectionRequest], seconds: float) -> None:
    """Give back claimed rows without an attempt: they wait `seconds` (a pause, no slot)."""
    when = timezone.now() + timedelta(seconds=seconds)
    for request in batch:
        current = request.next_attempt_at or when
        transition(request, Status.SUBMITTED, next_attempt_at=max(when, current))
    with transaction.atomic():
        _save(batch, ["next_attempt_at"])


@dataclass
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
            policy.apply(request, outcome, now)
        _save(batch, OUTCOME_FIELDS)
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
            requests_in_call=len(batch),
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
    notices.withdraw([row])
    return False


def _values(row: CollectionRequest, fields: list[str]) -> dict[str, Any]:
    """The row's values for `fields`, written so that alike rows share them: a finished row's
    announced_at (read only for submitted rows) is left out, and accepted meters that are all
    of the request's meters are written as F("meters")."""
    done = row.status != Status.SUBMITTED
    values = {f: getattr(row, f) for f in fields if not (done and f == "announced_at")}
    if row.meters and values.get("accepted_meters") == row.meters:
        values["accepted_meters"] = F("meters")
    return values


def _save(batch: Sequence[CollectionRequest], fields: list[str]) -> None:
    """Save the batch and free its lease. A row still submitted is marked unannounced, so a
    relay tells the workers about it once its next attempt falls due."""
    token = batch[0].lease_token if batch else None
    if len(batch) > 1:
        held = still_held(batch)
        kept = {r.pk for r in held}
        notices.withdraw(r for r in batch if r.pk not in kept)  # a stale outcome tells nobody
        batch = held
    now = timezone.now()
    for request in batch:
        request.lease_token = request.lease_expires_at = None
        request.updated = now
    for request in batch:
        if request.status == Status.SUBMITTED:
            request.announced_at = None
    saved = [*fields, "lease_token", "lease_expires_at", "announced_at", "updated"]
    _update_rows(batch, saved, token)
