"""The vendor's side of a collection once the POST accepted it, and the events it emits.

Each accepted meter's collection runs for `collection_delay` seconds (a progress event halfway),
then ends `updated` (bills and intervals counted, a `meters_full` note) or `errored` (for uids
starting with "errored", and a share `error_fraction` of the others, chosen by a hash of the
uid so a meter always ends the same way). Every step is an event in the vendor's shape, kept
for GET /events and queued for the webhook. Callers hold the state's lock.
"""

from __future__ import annotations

import zlib
from typing import Any

from .state import Collection, SandboxState, iso

DEFAULT_MONTHS = 12  # what a POST without collection_duration collects, in this sandbox
INTERVALS_PER_MONTH = 30 * 96  # 15-minute intervals
STAGE = "meter_historical_collection_"


def start(state: SandboxState, uids: list[str], months: int | None, now: float) -> None:
    """Start (or restart) the collection of each accepted meter."""
    for uid in uids:
        auth = state.authorization_for(uid)
        assert auth is not None  # accepted meters exist
        state.triggered[uid] = now
        state.finished.pop(uid, None)
        collection = Collection(uid, auth["uid"], months or DEFAULT_MONTHS, now,
                                now + state.collection_delay, _outcome(state, uid))  # fmt: skip
        state.collections[uid] = collection
        _emit_stage(state, collection, "started", now)
    state.wakeup.set()


def advance(state: SandboxState, now: float) -> None:
    """Move every running collection on to `now`: its progress event halfway, its end when due."""
    for collection in list(state.collections.values()):
        if not collection.progressed and now >= (collection.started + collection.ends) / 2:
            collection.progressed = True
            _emit_stage(state, collection, "progress", now)
        if now >= collection.ends:
            _finish(state, collection, now)


def revoke(state: SandboxState, authorization_uids: list[str], now: float) -> None:
    """Revoke authorizations, as their user would at the utility."""
    for uid in authorization_uids:
        state.revoked_authorizations.setdefault(uid, now)  # the earliest revocation counts
        emit(state, "authorization_revoked", now, authorization_uid=uid)


def emit(state: SandboxState, kind: str, now: float, **subject: str) -> dict[str, Any]:
    """Record one event and queue it for the webhook, if one is configured."""
    uid = next(state.event_uids)
    event = {"uid": uid, "type": kind, "ts": iso(now),
             "delivery_method": "webhook", "delivery_target": state.webhook_url or None,
             "is_delivered": False, **subject}  # fmt: skip
    state.events[uid] = event
    if state.webhook_url:
        state.unposted.append(uid)
        state.wakeup.set()
    return event


def _emit_stage(state: SandboxState, collection: Collection, stage: str, now: float) -> None:
    emit(state, STAGE + stage, now, meter_uid=collection.meter_uid,
         authorization_uid=collection.authorization_uid)  # fmt: skip


def _outcome(state: SandboxState, uid: str) -> str:
    share = zlib.crc32(uid.encode()) % 1000 / 1000
    return "errored" if uid.startswith("errored") or share < state.error_fraction else "updated"


def _finish(state: SandboxState, collection: Collection, now: float) -> None:
    uid, ok = collection.meter_uid, collection.outcome == "updated"
    del state.collections[uid]
    state.triggered.pop(uid, None)
    state.finished[uid] = {
        "status": collection.outcome,
        "status_ts": iso(now),
        "status_message": "" if ok else "The utility's website answered with an error.",
        "bill_count": collection.months if ok else 0,
        "interval_count": collection.months * INTERVALS_PER_MONTH if ok else 0,
        "notes": [{"type": "meters_full", "msg": "Historical data collected."}] if ok else [],
    }
    _emit_stage(state, collection, "finished_successful" if ok else "finished_errored", now)
