"""The meter registry's sync: the authorizations first (services/authorizations.py), then one
Meter row per meter that UtilityAPI's GET /meters lists, its authorization's revocation and
expiry copied from the Authorization rows. Operator doc: docs/meters.md.

Vendor facts: GET /meters lists at most 1000 meters a page, newest first, with `next` (a full
URL, or null on the last page); meters carry `uid`, `authorization_uid`, `utility`, `status`,
`is_activated`, `is_archived` and more, and clients must handle unknown attributes gracefully.
Revocation and expiry belong to the Authorization: a meter carries none of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from ..client import UtilityAPIClient, get_client, vendor_text
from ..models import Meter
from ..validation import clean_meters
from . import authorizations
from .pages import PageCounts, SyncPaused, read_pages, rows_by_uid, upsert

log = logging.getLogger(__name__)

METERS_PATH = "/meters"
ENDPOINT = "GET /meters"
# What the registry keeps of a vendor meter (shown by the admin too), and what a sync writes;
# the authorization flags are copied from the Authorization rows (refresh_meters).
VENDOR_FIELDS = (
    "authorization_uid",
    "utility",
    "vendor_status",
    "status_message",
    "is_activated",
    "is_archived",
)
SYNCED_FIELDS = [*VENDOR_FIELDS, "raw", "synced_at"]
__all__ = ["SyncPaused", "SyncResult", "meter_from_vendor", "sync_meters"]


@dataclass
class SyncResult(PageCounts):
    """Counts from one sync (meters `seen` on the vendor's pages, split into what happened)."""

    updated: int = 0
    archived: int = 0
    authorizations: int = 0  # read from GET /authorizations first

    def __str__(self) -> str:
        return (
            f"{self.seen} meter(s) in {self.pages} page(s): {self.created} new, "
            f"{self.updated} updated, {self.invalid} skipped as invalid; "
            f"{self.revoked} revoked, {self.expired} expired, {self.archived} archived; "
            f"{self.authorizations} authorization(s) read"
        )


def sync_meters(
    client: UtilityAPIClient | None = None,
    on_page: Callable[[SyncResult], None] | None = None,
) -> SyncResult:
    """Sync the authorizations (GET /authorizations), then read every page of GET /meters and
    upsert one Meter row per vendor meter; after each meter page, `on_page` (if given) gets
    the counts so far (progress for the CLI and the admin).

    Each page is written in its own short transaction after its HTTP call has returned, so
    no transaction is ever open across HTTP. On an error (a UtilityAPIError, raised after
    pages.PAGE_ATTEMPTS for transient ones) the pages already read stay written; rows are
    never deleted (meters the vendor stopped listing keep their old `synced_at`).
    """
    client = client or get_client()
    result = SyncResult(authorizations=authorizations.sync_authorizations(client).seen)
    for items in read_pages(client, METERS_PATH, ENDPOINT, "meters"):
        _upsert_page(items, result)
        result.pages += 1
        if on_page is not None:
            on_page(result)
    log.info("meter sync: %s", result)
    return result


def _upsert_page(items: list[Any], result: SyncResult) -> None:
    """Insert or update the page's meters in chunks (INSERT … ON CONFLICT (uid) DO UPDATE),
    then copy their authorizations' state onto them, in one transaction."""
    rows, invalid = rows_by_uid(items, meter_from_vendor, timezone.now())
    result.invalid += invalid
    page = Meter.objects.filter(uid__in=list(rows))
    with transaction.atomic():
        existing = page.count()
        upsert(Meter, rows.values(), SYNCED_FIELDS)
        authorizations.refresh_meters(page)
        counts = page.aggregate(
            revoked=Count("pk", filter=Q(authorization_revoked=True)),
            expired=Count("pk", filter=Q(authorization_expired=True)),
            archived=Count("pk", filter=Q(is_archived=True)),
        )
    result.seen += len(rows)
    result.created += len(rows) - existing
    result.updated += existing
    result.revoked += counts["revoked"]
    result.expired += counts["expired"]
    result.archived += counts["archived"]


def meter_from_vendor(item: Any, now: datetime) -> Meter | None:
    """An unsaved Meter from one vendor meter object; None when it has no usable uid.

    Unknown attributes are ignored (kept in `raw`), missing ones take the model's defaults.
    """
    if not isinstance(item, dict):
        return None
    uid = vendor_text(item.get("uid"))
    try:
        clean_meters([uid])  # a uid the service could not send later is no meter to keep
    except ValidationError:
        return None
    return Meter(
        uid=uid,
        authorization_uid=vendor_text(item.get("authorization_uid"), 64),
        utility=vendor_text(item.get("utility"), 100),
        vendor_status=vendor_text(item.get("status"), 32),
        status_message=vendor_text(item.get("status_message")),
        is_activated=item.get("is_activated") is True,
        is_archived=item.get("is_archived") is True,
        raw=item,
        synced_at=now,
    )
