"""The send pipeline: claim a due request (and its companions), wait for the fleet's gate,
POST once, record. No database transaction is ever open across the HTTP call.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections
from django.utils import timezone

from project import logs

from . import gate, services
from .client import Accepted, get_client
from .exceptions import AccountError, PermanentError, Throttled, UtilityAPIError
from .models import CollectionRequest, Status

log = logging.getLogger(__name__)


def deliver(request_id: str, task_id: str = "") -> str:
    """Look at one request: send it if it is due and nobody else holds it. Safe to run twice
    for the same request: the claim (a lease on the row) lets only one run POST."""
    logs.bind(request_id=request_id)  # on every line of the send path (LOG_FORMAT=json)
    get_client()  # a configuration error surfaces before anything is claimed
    row = CollectionRequest.objects.filter(pk=request_id).first()
    if row is None or row.status != Status.SUBMITTED:
        return "nothing to do"
    batch = services.claim(request_id, task_id, row=row)
    if not batch:
        return "not due, or held by another worker"
    return send(batch, task_id)  # during a pause, the gate refuses a slot and send defers


def send(batch: Sequence[CollectionRequest], task_id: str) -> str:
    """POST the batch's meters once, at the next rate-limit slot, and record the answer."""
    slot = gate.reserve(max_wait=settings.COLLECTIONS_SLOT_MAX_WAIT_SECONDS)
    if not slot.granted:
        services.defer(batch, slot.wait)
        return f"deferred {slot.wait:.2f}s ({'paused' if slot.paused else 'rate limit'})"
    time.sleep(slot.wait)
    paused = gate.clear_to_send()  # a 429 may have arrived while this worker slept
    if paused:
        services.defer(batch, paused)
        return f"paused for {paused:.1f}s"
    services.renew(batch)
    outcome, call = _post(batch, task_id)
    _pause_fleet_if_needed(outcome)
    if _must_split(batch, outcome):
        assert isinstance(outcome, UtilityAPIError)
        _record(services.record_split, batch, outcome, call)
        middle = len(batch) // 2
        return "; ".join(send(half, task_id) for half in (batch[:middle], batch[middle:]))
    _record(services.record_outcome, batch, outcome, call)
    return _summary(batch, outcome)


def _record(record: Any, *args: Any) -> None:
    """Record what a POST answered. The POST cannot be taken back: if the database blinks
    (a restart, a failover), wait for it within the lease's margin instead of losing the
    answer, which would have the sweep send the request again (a second paid trigger)."""
    deadline = time.monotonic() + settings.COLLECTIONS_LEASE_MARGIN_SECONDS * 0.8
    wait = 0.2
    while True:
        try:
            return record(*args)
        except (OperationalError, InterfaceError) as err:
            if time.monotonic() + wait > deadline:
                raise
            log.warning("database unavailable (%s): recording again in %.1fs", err, wait)
            close_old_connections()  # a broken connection is dropped; the next query reconnects
            time.sleep(wait)
            wait = min(wait * 2, 2.0)


def _post(
    batch: Sequence[CollectionRequest], task_id: str
) -> tuple[Accepted | UtilityAPIError, services.Call]:
    meters = list(dict.fromkeys(m for request in batch for m in request.meters))
    started, clock, call_id = timezone.now(), time.monotonic(), uuid.uuid4()
    logs.bind(call_id=call_id, request_ids=",".join(str(r.pk) for r in batch))
    outcome: Accepted | UtilityAPIError
    try:
        outcome = get_client().historical_collection(meters, batch[0].collection_duration)
    except UtilityAPIError as err:
        outcome = err
    elapsed = int((time.monotonic() - clock) * 1000)
    log.info("UtilityAPI answered %s in %d ms", _summary(batch, outcome), elapsed)
    return outcome, services.Call(call_id, started, elapsed, task_id)


def _pause_fleet_if_needed(outcome: Accepted | UtilityAPIError) -> None:
    if isinstance(outcome, Throttled):
        reason = f"429 from UtilityAPI: Retry-After {outcome.retry_after:g}s"
        gate.pause("throttle", outcome.retry_after or 0, reason)
    elif isinstance(outcome, AccountError):
        reason = f"{outcome.status_code} {outcome.error}: {outcome.description}"
        gate.pause("account", settings.COLLECTIONS_ACCOUNT_PAUSE_SECONDS, reason)
        log.error("UtilityAPI account unusable, all calls paused: %s", reason)


def _must_split(batch: Sequence[CollectionRequest], outcome: Accepted | UtilityAPIError) -> bool:
    """A 400 for a batch may be one request's bad meters: split to spare the others.
    (expired_or_revoked means every meter in the batch was dropped, so it holds for all.)"""
    return (
        len(batch) > 1
        and isinstance(outcome, PermanentError)
        and outcome.status_code == 400
        and outcome.error != "expired_or_revoked"
    )


def _summary(batch: Sequence[CollectionRequest], outcome: Accepted | UtilityAPIError) -> str:
    what = "200" if isinstance(outcome, Accepted) else f"{outcome.status_code} {outcome.error}"
    return f"{len(batch)} request(s): {what}"
