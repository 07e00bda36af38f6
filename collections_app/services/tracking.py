"""Collection tracking: store UtilityAPI's events once by uid, fold them and GET /meters reads
into each accepted meter's progress, and give a request its final `collection_outcome` once
every accepted meter has finished; authorization_* events go to services/authorizations.py.
Operator doc: docs/tracking.md.

Vendor facts (UtilityAPI's events and webhooks pages): events repeat and arrive out of order,
carry `uid`, `type`, `ts` and, for meter events, `meter_uid`; unknown types must be tolerated.
A meter's `status` is `pending` while a collection runs and `updated` when it is done
(`errored` appears in third-party code).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from ..client import parse_vendor_time
from ..models import (
    CollectionOutcome,
    CollectionRequest,
    Event,
    EventSource,
    MeterProgress,
    MeterResult,
    Status,
    VendorCall,
)
from ..signals import collection_finished
from . import authorizations, budget, notices

log = logging.getLogger(__name__)

STAGE_PREFIX = "meter_historical_collection_"
FINISHED_STAGES = {
    "finished_successful": MeterResult.SUCCESSFUL,
    "finished_errored": MeterResult.ERRORED,
}
FINISHED_STATUSES = {"updated": MeterResult.SUCCESSFUL, "errored": MeterResult.ERRORED}
# The vendor's clock and ours differ, and its `started` event may be stamped before our POST
# got its answer: an event this much older than a meter's acceptance still belongs to it.
CLOCK_SKEW = timedelta(minutes=2)
UID_MAX = 255
TYPE_MAX = 100
PROCESS_CHUNK = 200  # events applied per transaction


class MalformedEvent(ValueError):
    """An event object without the fields every event has (a string uid and type)."""


@dataclass(frozen=True)
class IncomingEvent:
    uid: str
    type: str
    ts: datetime | None
    meter_uid: str
    authorization_uid: str
    raw: dict[str, Any]


def parse_event(item: Any) -> IncomingEvent:
    """One vendor event object, checked; raises MalformedEvent. Unknown types and extra
    attributes are kept; an unparsable `ts` is kept in `raw` only."""
    if not isinstance(item, dict):
        raise MalformedEvent("an event must be a JSON object")
    uid, kind = item.get("uid"), item.get("type")
    if not isinstance(uid, str) or not uid.strip() or len(uid) > UID_MAX or "\x00" in uid:
        raise MalformedEvent(f"an event needs a uid string of 1–{UID_MAX} characters")
    if not isinstance(kind, str) or len(kind) > TYPE_MAX or "\x00" in kind:
        raise MalformedEvent(f"event {uid[:40]!r} needs a type string of at most {TYPE_MAX}")
    return IncomingEvent(
        uid=uid,
        type=kind,
        ts=parse_vendor_time(item.get("ts")),
        meter_uid=_uid_text(item.get("meter_uid")),
        authorization_uid=_uid_text(item.get("authorization_uid")),
        raw=item,
    )


def _uid_text(value: Any) -> str:
    """A uid attribute as text (uids are strings even when they look like numbers)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value)[:64]


def stage_of(event_type: str) -> str | None:
    """The stage a meter_historical_collection_* event names (unknown suffixes included)."""
    if event_type.startswith(STAGE_PREFIX) and len(event_type) > len(STAGE_PREFIX):
        return event_type[len(STAGE_PREFIX) :]
    return None


# --- receiving ----------------------------------------------------------------------------


def receive(events: Sequence[IncomingEvent], via: str) -> list[int]:
    """Store the events not seen before (INSERT … ON CONFLICT (uid) DO NOTHING) and, once the
    transaction commits, hand the unprocessed ones to a worker. Returns their ids. A lost
    message is harmless: the periodic poll processes whatever is left unprocessed."""
    if not events:
        return []
    now = timezone.now()
    rows = [
        Event(
            uid=e.uid,
            type=e.type,
            ts=e.ts,
            meter_uid=e.meter_uid,
            authorization_uid=e.authorization_uid,
            raw=e.raw,
            via=via,
            received_at=now,
        )
        for e in events
    ]
    with transaction.atomic():
        Event.objects.bulk_create(rows, ignore_conflicts=True)
        uids = [e.uid for e in events]
        fresh = Event.objects.filter(uid__in=uids, processed_at=None)
        ids = list(fresh.values_list("pk", flat=True))
        if ids:
            transaction.on_commit(lambda: _enqueue(ids))
    return ids


def _enqueue(ids: list[int]) -> None:
    from ..tasks import process_events

    try:
        process_events.delay(ids)
    except Exception as err:  # kombu/redis errors vary: the poll processes them later
        log.warning("broker unavailable (%s): %d event(s) wait for the poll", err, len(ids))


# --- processing ---------------------------------------------------------------------------


def process_events(ids: Iterable[int] | None = None) -> int:
    """Apply unprocessed events (these ids, or all of them) to the meters' progress and the
    authorizations, in the order of their own times, and settle the requests they finish.
    Returns how many."""
    pending = Event.objects.filter(processed_at=None)
    if ids is not None:
        pending = pending.filter(pk__in=list(ids))
    done = 0
    while True:
        with transaction.atomic():
            chunk = list(
                pending.select_for_update(skip_locked=True).order_by("ts", "pk")[:PROCESS_CHUNK]
            )
            if not chunk:
                return done
            touched = apply_events(chunk)
            authorizations.apply_events(chunk)  # authorization_revoked, _expired, _renewed
            Event.objects.filter(pk__in=[e.pk for e in chunk]).update(processed_at=timezone.now())
            settle(touched)
        done += len(chunk)


def apply_events(events: Sequence[Event]) -> set[Any]:
    """Fold the meter events, in the order of their own times, into the progress rows they
    belong to; the ids of the requests touched. Inside the caller's transaction: the rows are
    read (locked) in one query and written back in one."""
    staged = [(e, stage) for e in events if e.meter_uid and (stage := stage_of(e.type))]
    if not staged:
        return set()  # no meter progress (ping, authorization_*, meter_bills_added, …)
    staged.sort(key=lambda pair: (_when(pair[0]), pair[0].pk or 0))
    rows = _open_rows({e.meter_uid for e, _ in staged})
    now, changed = timezone.now(), {}
    for event, stage in staged:
        when = _when(event)
        for row in rows.get(event.meter_uid, []):
            if row.accepted_at <= when + CLOCK_SKEW and _takes_stage(row, stage, when):
                row.stage, row.stage_ts, row.stage_changed = stage, when, now
                changed[row.pk] = _with_result(row, now)
    _write(changed.values(), STAGE_FIELDS)
    return {row.request_id for row in changed.values()}


def _when(event: Event) -> datetime:
    return event.ts or event.received_at


def _open_rows(meters: Iterable[str]) -> dict[str, list[MeterProgress]]:
    """The progress rows of these meters that events can still change: of requests without
    an outcome yet (an outcome is final, and so is the record behind it). Locked, in a fixed
    order (no deadlocks); by meter."""
    rows: dict[str, list[MeterProgress]] = {}
    query = (
        MeterProgress.objects.select_for_update(of=("self",))
        .filter(meter__in=list(meters), request__collection_outcome__isnull=True)
        .order_by("pk")
    )
    for row in query:
        rows.setdefault(row.meter, []).append(row)
    return rows


def _takes_stage(row: MeterProgress, stage: str, when: datetime) -> bool:
    """Events arrive out of order: an older event never replaces a newer stage, and only a
    finished_* event replaces a finished_* stage (a late `started` never undoes it)."""
    if row.stage_ts is not None and when < row.stage_ts:
        return False
    return not (row.stage in FINISHED_STAGES and stage not in FINISHED_STAGES)


RESULT_FIELDS = ["result", "finished_at", "changed"]
STAGE_FIELDS = ["stage", "stage_ts", "stage_changed", *RESULT_FIELDS]
STATUS_FIELDS = [
    "status",
    "status_message",
    "status_ts",
    "status_changed",
    "bill_count",
    "interval_count",
    *RESULT_FIELDS,
]


def _write(rows: Iterable[MeterProgress], fields: list[str]) -> None:
    """Save `fields` of these (existing, locked) rows in one statement: INSERT … ON CONFLICT
    (id) DO UPDATE. bulk_update wrote a CASE per field and row: about a second of CPU per
    hundred rows; a row at a time, a round trip each."""
    MeterProgress.objects.bulk_create(
        list(rows), update_conflicts=True, unique_fields=["id"], update_fields=fields
    )


def _with_result(row: MeterProgress, now: datetime) -> MeterProgress:
    """The changed row with its result: a finished stage first, else a fresh finished
    status; once finished it never goes back to collecting."""
    result = FINISHED_STAGES.get(row.stage) or _status_result(row) or row.result
    if result and not row.result:
        row.finished_at = now
    row.result, row.changed = result, now
    return row


def _status_result(row: MeterProgress) -> str:
    """The result a meter's status says, if the status is newer than the acceptance."""
    fresh = row.status_ts is None or row.status_ts >= row.accepted_at - CLOCK_SKEW
    return FINISHED_STATUSES.get(row.status, "") if fresh else ""


# --- meters read with GET /meters ---------------------------------------------------------


def apply_meters(items: Sequence[Any], asked: Sequence[str]) -> int:
    """Record what GET /meters said about the meters `asked`; settle what it finishes.
    Returns how many progress rows changed."""
    now = timezone.now()
    by_uid = {_uid_text(m.get("uid")): m for m in items if isinstance(m, dict)}
    with transaction.atomic():
        rows = (
            MeterProgress.objects.select_for_update(of=("self",))
            .filter(meter__in=list(asked), result="", request__collection_outcome__isnull=True)
            .order_by("pk")
        )
        changed, seen = [], []
        for row in rows:
            seen.append(row.pk)
            row.polled_at = now
            if row.meter in by_uid and _take_status(row, by_uid[row.meter], now):
                changed.append(_with_result(row, now))
        _write(changed, STATUS_FIELDS)
        MeterProgress.objects.filter(pk__in=seen).update(polled_at=now)
        settle({row.request_id for row in changed})
    return len(changed)


def _take_status(row: MeterProgress, meter: dict[str, Any], now: datetime) -> bool:
    """Copy the meter's status, message, time and counts onto the row; True if any changed."""
    values = {
        "status": str(meter.get("status") or "")[:32],
        "status_message": str(meter.get("status_message") or ""),
        "status_ts": parse_vendor_time(meter.get("status_ts")),
        "bill_count": _count(meter.get("bill_count")),
        "interval_count": _count(meter.get("interval_count")),
    }
    if all(getattr(row, name) == value for name, value in values.items()):
        return False
    if (row.status, row.status_message) != (values["status"], values["status_message"]):
        row.status_changed = now
    for name, value in values.items():
        setattr(row, name, value)
    return True


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def meters_to_poll(now: datetime, older_than: timedelta) -> list[str]:
    """Meters still collecting `older_than` after their acceptance, oldest first."""
    rows = (
        MeterProgress.objects.filter(
            result="",
            accepted_at__lte=now - older_than,
            request__collection_outcome__isnull=True,
        )
        .order_by("accepted_at")
        .values_list("meter", flat=True)
    )
    return list(dict.fromkeys(rows))


# --- a request's progress begins, and ends ------------------------------------------------


def begin(batch: Sequence[CollectionRequest]) -> None:
    """Start following the accepted meters of the batch's newly pending requests: one
    progress row each. Inside the caller's transaction; once it commits, events that got
    here before the rows did are applied (a failure there is logged, never raised: the POST's
    outcome is recorded by then, and the meter poll is the safety net)."""
    now = timezone.now()
    pending = [r for r in batch if r.status == Status.PENDING and r.accepted_meters]
    rows = [
        MeterProgress(request=r, meter=meter, accepted_at=now, changed=now)
        for r in pending
        for meter in r.accepted_meters
    ]
    if not rows:
        return
    MeterProgress.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    meters = list({row.meter for row in rows})
    transaction.on_commit(lambda: replay(meters, since=now), robust=True)


def replay(meters: Sequence[str], since: datetime) -> int:
    """Apply again the events of these meters stored since just before `since` (their
    acceptance): a webhook can beat the POST's answer. When there are none, as usual, that is
    one query and no transaction (apply_events locks the rows it changes); returns how many
    were looked at."""
    events = Event.objects.filter(meter_uid__in=list(meters), received_at__gte=since - CLOCK_SKEW)
    found = list(events.order_by("ts", "pk"))
    if found:
        with transaction.atomic():
            settle(apply_events(found))
    return len(found)


def outcome_of(successful: int, errored: int) -> str:
    if not errored:
        return CollectionOutcome.COLLECTED
    if not successful:
        return CollectionOutcome.COLLECTION_ERRORED
    return CollectionOutcome.PARTIALLY_COLLECTED


def settle(request_ids: Iterable[Any]) -> list[Any]:
    """Give each of these requests whose accepted meters have all finished its outcome and
    expected cost, once (an UPDATE guarded by collection_outcome IS NULL, on rows locked
    first), and send `collection_finished` after commit. Returns the ids that got an outcome now."""
    ids = list(request_ids)
    if not ids:
        return []
    counts = (
        MeterProgress.objects.filter(request_id__in=ids)
        .order_by()
        .values("request_id")
        .annotate(
            collecting=Count("pk", filter=Q(result="")),
            successful=Count("pk", filter=Q(result=MeterResult.SUCCESSFUL)),
            errored=Count("pk", filter=Q(result=MeterResult.ERRORED)),
        )
    )
    by_outcome: dict[str, list[Any]] = {}
    successful = {row["request_id"]: row["successful"] for row in counts}
    for row in counts:
        if not row["collecting"]:
            outcome = outcome_of(row["successful"], row["errored"])
            by_outcome.setdefault(outcome, []).append(row["request_id"])
    now, finished = timezone.now(), []
    for outcome, group in by_outcome.items():
        open_ = CollectionRequest.objects.filter(
            pk__in=group, status=Status.PENDING, collection_outcome__isnull=True
        )
        locked = list(open_.select_for_update().order_by("pk").values_list("pk", flat=True))
        open_.filter(pk__in=locked).update(
            collection_outcome=outcome, collection_finished_at=now, updated=now
        )
        finished += locked
    if finished:
        budget.record_expected({pk: successful[pk] for pk in finished})
        notices.finished(finished)  # the callbacks, stored with the outcome
        transaction.on_commit(lambda: _announce(finished))
    return finished


def _announce(ids: list[Any]) -> None:
    for request in CollectionRequest.objects.filter(pk__in=ids):
        log.info("collection %s finished: %s", request.pk, request.collection_outcome)
        collection_finished.send_robust(sender=request)


# --- the call log -------------------------------------------------------------------------


def record_call(
    method: str,
    endpoint: str,
    started: datetime,
    duration_ms: int,
    *,
    status_code: int | None,
    items: int = 0,
    error: str = "",
    error_description: str = "",
) -> None:
    """Log one tracking call to UtilityAPI, for the dashboard and the admin."""
    VendorCall.objects.create(
        method=method,
        endpoint=endpoint,
        started=started,
        duration_ms=duration_ms,
        status_code=status_code,
        items=items,
        error=error[:64],
        error_description=error_description,
    )


def mark_acknowledged(uids: Sequence[str]) -> None:
    """These events were marked delivered at the vendor (PATCH /events/{uid})."""
    Event.objects.filter(uid__in=list(uids)).update(acknowledged_at=timezone.now())


__all__ = [
    "EventSource",
    "IncomingEvent",
    "MalformedEvent",
    "apply_events",
    "apply_meters",
    "begin",
    "meters_to_poll",
    "outcome_of",
    "parse_event",
    "process_events",
    "receive",
    "record_call",
    "replay",
    "settle",
    "stage_of",
]
