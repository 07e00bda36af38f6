"""What a collection request's admin page shows: its status badge, a table of its meters
(asked, accepted by UtilityAPI, or ignored) and its timeline, read top to bottom: stored,
each attempt with UtilityAPI's answer, then where it stands (waiting, pending or failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import selectors
from .models import CollectionRequest, Meter, Status

STATUS_COLOURS = {Status.SUBMITTED: "#417690", Status.PENDING: "#2a7a2a", Status.FAILED: "#ba2121"}
STATUS_MEANINGS = {
    Status.SUBMITTED: "stored, waiting for or between attempts",
    Status.PENDING: "UtilityAPI accepted it: the meters' collection runs",
    Status.FAILED: "UtilityAPI refused it, or retries ran out",
}


@dataclass(frozen=True)
class MeterRow:
    uid: str
    state: str  # asked (no answer yet), accepted or ignored
    meter_pk: int | None  # the registry's row, when the meter is in it
    progress: Any  # per-meter collection progress, once the request tracks it


@dataclass(frozen=True)
class Event:
    when: datetime | None
    kind: str  # stored, accepted, refused, unavailable, throttled, no-answer, waiting,
    # pending or failed
    title: str
    detail: str = ""
    task_id: str = ""


def meter_rows(request: CollectionRequest) -> list[MeterRow]:
    """One row per asked meter, in the order asked, with its registry row (one query)."""
    accepted, ignored = set(request.accepted_meters or []), set(request.ignored_meters or [])
    in_registry = dict(Meter.objects.filter(uid__in=request.meters).values_list("uid", "pk"))
    progress = {p["meter"]: _progress_text(p) for p in selectors.meters_progress(request)}
    rows = []
    for uid in request.meters:
        state = "accepted" if uid in accepted else "ignored" if uid in ignored else "asked"
        rows.append(MeterRow(uid, state, in_registry.get(uid), progress.get(uid)))
    return rows


def _progress_text(progress: dict[str, Any]) -> str:
    """ "finished_successful · updated": the collection's stage and the meter's status."""
    return " · ".join(str(v) for v in (progress["stage"], progress["status"]) if v) or "-"


def timeline(request: CollectionRequest) -> list[Event]:
    """The request's history, oldest first."""
    events = [_stored(request)]
    events += [_attempt(attempt) for attempt in request.http_attempts.all()]
    events.append(_now(request))
    return events


def _stored(request: CollectionRequest) -> Event:
    months = request.collection_duration
    duration = f"{months} month(s)" if months else "the account's default duration"
    who = f" by {request.requested_by}" if request.requested_by else ""
    return Event(
        request.created,
        "stored",
        "Stored",
        f"{len(request.meters)} meter(s), {duration}, from {request.get_source_display()}{who}.",
    )


def _attempt(attempt: Any) -> Event:
    """One POST and UtilityAPI's answer to it."""
    took = f" in {attempt.duration_ms} ms" if attempt.duration_ms is not None else ""
    shared = (
        f" (one POST for {attempt.requests_in_call} requests)"
        if attempt.requests_in_call > 1
        else ""
    )
    why = f"{attempt.error}: {attempt.error_description}" if attempt.error else ""
    code = attempt.status_code
    if code is None:
        kind, title = "no-answer", "Sent: no answer"
    elif code == 200:
        kind, title = "accepted", "Sent: HTTP 200, accepted"
    elif code == 429:
        kind, title = "throttled", "Sent: HTTP 429, rate limited"
        why = why or f"retry after {attempt.retry_after_seconds or 0:g} s"
    elif code >= 500 and code != 500:  # 503, 504, …: retried with backoff
        kind, title = "unavailable", f"Sent: HTTP {code}, UtilityAPI unavailable"
    else:
        kind, title = "refused", f"Sent: HTTP {code}"
    detail = " ".join(part for part in [f"Answered{took}{shared}.", why] if part)
    return Event(attempt.started, kind, title, detail, attempt.task_id)


def _now(request: CollectionRequest) -> Event:
    """Where the request stands now."""
    if request.status == Status.PENDING:
        ignored = len(request.ignored_meters or [])
        return Event(
            request.updated,
            "pending",
            "Pending: accepted by UtilityAPI",
            f"{len(request.accepted_meters or [])} meter(s) accepted, {ignored} ignored "
            "(revoked or expired authorizations); UtilityAPI collects their history now.",
        )
    if request.status == Status.FAILED:
        return Event(
            request.updated,
            "failed",
            f"Failed: {request.error}",
            request.error_description,
        )
    if request.hold:
        return Event(
            None, "waiting", f"On hold: {request.get_hold_display()}", request.hold_reason or ""
        )
    return Event(
        request.next_attempt_at,
        "waiting",
        "Waiting for the next attempt",
        f"{request.attempts} attempt(s) so far; the next is due at this time.",
    )
