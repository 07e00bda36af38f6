"""The send pipeline: claim due requests (coalesced), pass the fleet's gate, POST once,
record; again until nothing is due. No database transaction is ever open across the HTTP
call.
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

from . import gate
from .client import Accepted, get_client
from .exceptions import PermanentError, UtilityAPIError
from .models import CollectionRequest
from .services import broker, leases, outcomes
from .services.outcomes import Call

log = logging.getLogger(__name__)
ENDPOINT = "POST /meters/historical-collection"
DRAIN_SECONDS = 60.0  # one task's turn before it hands the rest to another


def deliver_due(task_id: str = "", first: Any = None, budget: float = DRAIN_SECONDS) -> str:
    """Send due requests, a claimed batch at a time, until none is due or `budget` seconds
    have gone; `first` (a request id) is claimed first if it is due. Safe to run twice and
    side by side: the claim (a lease on the rows) lets only one run POST each. Returns what
    was done, "" when nothing was due."""
    get_client()  # a configuration error surfaces before anything is claimed
    done: list[str] = []
    deadline = time.monotonic() + budget
    try:
        while batch := leases.claim(first, task_id):
            first = None
            done.append(send(batch, task_id))  # during a pause the gate refuses, send defers
            if time.monotonic() > deadline:
                broker.publish(1)  # hand what is left to a fresh task
                break
    except gate.Held as held:  # the gate cannot be asked: stop; the sweep finds the rest
        done.append(f"stopped, {held}")
    return "; ".join(done)


def send(batch: Sequence[CollectionRequest], task_id: str) -> str:
    """POST the batch's meters once, through the fleet's gate, and record the answer."""
    call = Call(uuid.uuid4(), timezone.now(), 0, task_id)
    ids = [str(request.pk) for request in batch]
    # On every line of the send path from here on (LOG_FORMAT=json): `grep <request id>`.
    logs.bind(request_id=ids[0] if len(ids) == 1 else "", request_ids=",".join(ids))
    logs.bind(call_id=call.call_id)
    try:
        outcome: Accepted | UtilityAPIError = gate.call(ENDPOINT, lambda: _post(batch, call))
    except gate.Held as held:
        outcomes.defer(batch, held.wait)
        if held.unavailable:
            raise
        return f"deferred: {held}"
    except UtilityAPIError as err:
        outcome = err
    log.info("UtilityAPI answered %s in %d ms", _summary(batch, outcome), call.duration_ms)
    if _must_split(batch, outcome):
        assert isinstance(outcome, UtilityAPIError)
        _record(outcomes.record_split, batch, outcome, call)
        middle = len(batch) // 2
        return "; ".join(send(half, task_id) for half in (batch[:middle], batch[middle:]))
    _record(outcomes.record_outcome, batch, outcome, call)
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


def _post(batch: Sequence[CollectionRequest], call: Call) -> Accepted:
    """The POST itself, its lease renewed first; `call` notes when it started and how long
    it took (the attempt rows' figures)."""
    leases.renew(batch)
    meters = list(dict.fromkeys(m for request in batch for m in request.meters))
    call.started, clock = timezone.now(), time.monotonic()
    try:
        return get_client().historical_collection(meters, batch[0].collection_duration)
    finally:
        call.duration_ms = int((time.monotonic() - clock) * 1000)


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
