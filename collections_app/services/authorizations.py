"""The authorizations behind the meter registry: their sync from UtilityAPI's GET
/authorizations, their authorization_* events between syncs, and the copy of their revocation
and expiry onto their meters (Meter.authorization_revoked/_expired, which COLLECTABLE, the bulk
trigger's counts and the admin's filters read). Operator doc: docs/meters.md.

Vendor facts: an authorization carries `uid`, `status`, `declined`/`is_declined`, `expires`
(an ISO time, or a preset string before the customer submitted the form), `is_expired`,
`revoked` (the earliest revocation's time, or null), `is_revoked`, `is_test` and `notes`;
clients must tolerate unknown attributes. A meter carries only `authorization_uid`, and the
historical-collection POST drops a meter whose authorization is revoked or expired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.utils import timezone

from ..client import UtilityAPIClient, parse_vendor_time, vendor_text
from ..models import (
    AUTHORIZATION_EXPIRED,
    AUTHORIZATION_REVOKED,
    UID_MAX_LENGTH,
    Authorization,
    Event,
    Meter,
)
from ..validation import uid_characters_ok
from .pages import PageCounts, read_pages, rows_by_uid, upsert

log = logging.getLogger(__name__)

PATH = "/authorizations"
ENDPOINT = "GET /authorizations"
SYNCED_FIELDS = [
    "status", "revoked", "is_revoked", "expires", "is_expired", "is_declined", "is_test",
    "raw", "synced_at",
]  # fmt: skip


def sync_authorizations(client: UtilityAPIClient) -> PageCounts:
    """Read every page of GET /authorizations, upsert one Authorization row per vendor
    authorization and copy its state onto its meters. Each page is written in its own short
    transaction once its call has returned; rows are never deleted."""
    result = PageCounts()
    for items in read_pages(client, PATH, ENDPOINT, "authorizations"):
        _upsert_page(items, result)
        result.pages += 1
    log.info("authorization sync: %s", result)
    return result


def _upsert_page(items: list[Any], result: PageCounts) -> None:
    rows, invalid = rows_by_uid(items, authorization_from_vendor, timezone.now())
    result.invalid += invalid
    uids = list(rows)
    with transaction.atomic():
        existing = Authorization.objects.filter(uid__in=uids).count()
        upsert(Authorization, rows.values(), SYNCED_FIELDS)
        refresh_meters(Meter.objects.filter(authorization_uid__in=uids))
        counts = Authorization.objects.filter(uid__in=uids).aggregate(
            revoked=Count("pk", filter=AUTHORIZATION_REVOKED),
            expired=Count("pk", filter=AUTHORIZATION_EXPIRED),
        )
    result.seen += len(rows)
    result.created += len(rows) - existing
    result.revoked += counts["revoked"]
    result.expired += counts["expired"]


def authorization_from_vendor(item: Any, now: datetime) -> Authorization | None:
    """An unsaved Authorization from one vendor object; None when it has no usable uid.

    Unknown attributes are kept in `raw` only; a time that does not parse (the preset
    `expires` string of an unsubmitted form) is stored as empty, and so counts for nothing.
    """
    if not isinstance(item, dict):
        return None
    uid = vendor_text(item.get("uid"))
    if not usable_uid(uid):
        return None
    return Authorization(
        uid=uid,
        status=vendor_text(item.get("status"), 32),
        revoked=parse_vendor_time(item.get("revoked")),
        is_revoked=item.get("is_revoked") is True,
        expires=parse_vendor_time(item.get("expires")),
        is_expired=item.get("is_expired") is True,
        is_declined=item.get("is_declined") is True,
        is_test=item.get("is_test") is True,
        raw=item,
        synced_at=now,
    )


def usable_uid(uid: str) -> bool:
    """An authorization uid worth a row: 1–64 characters, none a space or a control."""
    return 0 < len(uid) <= UID_MAX_LENGTH and uid_characters_ok(uid)


# --- the meters' copy ---------------------------------------------------------------------


def refresh_meters(meters: QuerySet[Meter]) -> int:
    """Copy revocation and expiry (models.AUTHORIZATION_REVOKED/_EXPIRED) from the
    Authorization rows onto these meters, in one UPDATE of the rows that change; a meter
    whose authorization is unknown counts as neither. Returns how many changed."""
    theirs = Authorization.objects.filter(uid=OuterRef("authorization_uid"))
    revoked, expired = (
        Exists(theirs.filter(AUTHORIZATION_REVOKED)),
        Exists(theirs.filter(AUTHORIZATION_EXPIRED)),
    )
    stale = meters.exclude(authorization_revoked=revoked, authorization_expired=expired)
    return stale.update(authorization_revoked=revoked, authorization_expired=expired)


def refresh_lapsed() -> int:
    """Mark expired the meters whose authorization's expiry time has passed since the last
    sync or event (the vendor's is_expired would say so only at the next sync). Usually
    changes nothing; the bulk trigger runs it before it counts."""
    lapsed = Authorization.objects.filter(AUTHORIZATION_EXPIRED, is_expired=False)
    meters = Meter.objects.filter(
        authorization_expired=False, authorization_uid__in=lapsed.values("uid")
    )
    return meters.update(authorization_expired=True)


# --- events between syncs -----------------------------------------------------------------


def _revoked(row: Authorization, when: datetime) -> None:
    row.is_revoked = True
    row.revoked = min(row.revoked or when, when)  # the earliest revocation


def _expired(row: Authorization, when: datetime) -> None:
    row.is_expired = True
    row.expires = min(row.expires or when, when)


def _renewed(row: Authorization, when: datetime) -> None:
    """A renewal gives the authorization a new expiry (the event does not say which: the next
    sync reads it); a revocation stays until a sync says otherwise."""
    row.is_expired = False
    row.expires = None


EVENT_CHANGES: dict[str, Callable[[Authorization, datetime], None]] = {
    "authorization_revoked": _revoked,
    "authorization_expired": _expired,
    "authorization_renewed": _renewed,
}
EVENT_FIELDS = ["is_revoked", "revoked", "is_expired", "expires", "event_ts"]


def apply_events(events: Sequence[Event]) -> int:
    """Fold the authorization_revoked, _expired and _renewed events, in the order of their
    own times, into their Authorization rows and those rows' meters; returns how many rows
    changed. Inside the caller's transaction.

    An event older than what the row already knows (its sync, or a later event) changes
    nothing. An event for an authorization no sync has listed yet creates its row, which the
    next sync completes; events without a usable authorization_uid are ignored."""
    relevant = [e for e in events if e.type in EVENT_CHANGES and usable_uid(e.authorization_uid)]
    if not relevant:
        return 0
    relevant.sort(key=lambda e: (_when(e), e.pk or 0))
    uids = sorted({e.authorization_uid for e in relevant})
    Authorization.objects.bulk_create([Authorization(uid=u) for u in uids], ignore_conflicts=True)
    rows = {a.uid: a for a in Authorization.objects.select_for_update().filter(uid__in=uids)}
    changed: dict[str, Authorization] = {}
    for event in relevant:
        row, when = rows[event.authorization_uid], _when(event)
        known = max((t for t in (row.synced_at, row.event_ts) if t is not None), default=None)
        if known is None or when >= known:
            EVENT_CHANGES[event.type](row, when)
            row.event_ts = when
            changed[row.uid] = row
    Authorization.objects.bulk_update(changed.values(), EVENT_FIELDS)
    refresh_meters(Meter.objects.filter(authorization_uid__in=list(changed)))
    return len(changed)


def _when(event: Event) -> datetime:
    return event.ts or event.received_at
