"""The meter registry's sync: one Meter row per meter that UtilityAPI's GET /meters lists.
Operator doc: docs/meters.md.

Vendor facts: GET /meters lists at most 1000 meters a
page, newest first, with `next` (a full URL, or null on the last page); meters carry `uid`,
`authorization_uid`, `utility`, `status`, `is_activated`, `is_archived` and more, and clients
must handle unknown attributes gracefully. Revocation and expiry belong to the Authorization;
the built-in sandbox inlines them as `authorization: {revoked, expired}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from .. import gate
from ..client import UtilityAPIClient, get_client, parse_vendor_time
from ..exceptions import BadResponse, Throttled, TransientError
from ..models import Meter
from ..validation import clean_meters
from . import policy

log = logging.getLogger(__name__)

METERS_PATH = "/meters"
ENDPOINT = "GET /meters"
UPSERT_CHUNK = 500  # rows per INSERT … ON CONFLICT statement
PAGE_ATTEMPTS = 3  # tries per page on 429, 503, 504 and network errors
# What the registry keeps of a vendor meter (shown by the admin too), and what a sync writes.
VENDOR_FIELDS = (
    "authorization_uid",
    "utility",
    "vendor_status",
    "status_message",
    "is_activated",
    "is_archived",
    "authorization_revoked",
    "authorization_expired",
)
SYNCED_FIELDS = [*VENDOR_FIELDS, "raw", "synced_at"]


@dataclass
class SyncResult:
    """Counts from one sync (meters `seen` on the vendor's pages, split into what happened)."""

    pages: int = 0
    seen: int = 0
    created: int = 0
    updated: int = 0
    invalid: int = 0  # objects without a usable uid: skipped
    revoked: int = 0
    expired: int = 0
    archived: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.seen} meter(s) in {self.pages} page(s): {self.created} new, "
            f"{self.updated} updated, {self.invalid} skipped as invalid; "
            f"{self.revoked} revoked, {self.expired} expired, {self.archived} archived"
        )


class SyncPaused(TransientError):
    """The fleet's gate forbids calls to UtilityAPI for longer than a sync waits."""


def sync_meters(
    client: UtilityAPIClient | None = None,
    on_page: Callable[[SyncResult], None] | None = None,
) -> SyncResult:
    """Read every page of GET /meters and upsert one Meter row per vendor meter; after each
    page, `on_page` (if given) gets the counts so far (progress for the CLI and the admin).

    Each page is written in its own short transaction after its HTTP call has returned, so
    no transaction is ever open across HTTP. On an error (a UtilityAPIError, raised after
    PAGE_ATTEMPTS for transient ones) the pages already read stay written; rows are never
    deleted (meters the vendor stopped listing keep their old `synced_at`).
    """
    client = client or get_client()
    result = SyncResult()
    url: str | None = client.base_url + METERS_PATH
    visited: set[str] = set()
    while url is not None:
        visited.add(url)
        body = _fetch_page(client, url)
        _upsert_page(body["meters"], result)
        result.pages += 1
        if on_page is not None:
            on_page(result)
        url = client.next_page(body, visited, ENDPOINT)
    log.info("meter sync: %s", result)
    return result


def _fetch_page(client: UtilityAPIClient, url: str) -> dict[str, Any]:
    """One page's JSON body, through the fleet's gate, retrying transient errors."""
    for attempt in range(1, PAGE_ATTEMPTS + 1):
        try:
            body = _gated_get(client, url)
        except TransientError as err:
            wait = _retry_wait(err, attempt)
            if wait is None:
                raise
            log.warning("meter sync: %s; page retried in %.1fs", err, wait)
            time.sleep(wait)
            continue
        if not isinstance(body.get("meters"), list):
            raise BadResponse("bad_response", "GET /meters answered without a `meters` list")
        return body
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _gated_get(client: UtilityAPIClient, url: str) -> dict[str, Any]:
    """GET through the gate; a pause short enough is waited out once, a longer one stops
    the sync (SyncPaused)."""
    wait = 0.0
    for _ in range(2):
        try:
            return gate.call(ENDPOINT, lambda: client.get_json(url))
        except gate.Held as held:
            wait = held.wait
        if wait > settings.METERS_SYNC_MAX_WAIT_SECONDS:
            break
        time.sleep(wait)
    raise SyncPaused("paused", f"UtilityAPI calls are held for {wait:.0f}s")


def _retry_wait(err: TransientError, attempt: int) -> float | None:
    """Seconds before trying the page again, or None to give up (and re-raise)."""
    if attempt >= PAGE_ATTEMPTS:
        return None
    wait = (err.retry_after or 0.0) if isinstance(err, Throttled) else policy.backoff(attempt)
    return wait if wait <= settings.METERS_SYNC_MAX_WAIT_SECONDS else None


def _upsert_page(items: list[Any], result: SyncResult) -> None:
    """Insert or update the page's meters in chunks (INSERT … ON CONFLICT (uid) DO UPDATE)."""
    now = timezone.now()
    rows: dict[str, Meter] = {}
    for item in items:
        meter = meter_from_vendor(item, now)
        if meter is None:
            result.invalid += 1
            continue
        rows[meter.uid] = meter  # a uid twice on a page: the last wins (one row per statement)
    existing = set(Meter.objects.filter(uid__in=list(rows)).values_list("uid", flat=True))
    Meter.objects.bulk_create(
        rows.values(),
        batch_size=UPSERT_CHUNK,
        update_conflicts=True,
        unique_fields=["uid"],
        update_fields=SYNCED_FIELDS,
    )
    _count(rows.values(), existing, result)


def _count(meters: Iterable[Meter], existing: set[str], result: SyncResult) -> None:
    for meter in meters:
        result.seen += 1
        result.updated += meter.uid in existing
        result.created += meter.uid not in existing
        result.revoked += meter.authorization_revoked
        result.expired += meter.authorization_expired
        result.archived += meter.is_archived


def meter_from_vendor(item: Any, now: datetime) -> Meter | None:
    """An unsaved Meter from one vendor meter object; None when it has no usable uid.

    Unknown attributes are ignored (kept in `raw`), missing ones take the model's defaults.
    """
    if not isinstance(item, dict):
        return None
    uid = _text(item.get("uid"))
    try:
        clean_meters([uid])  # a uid the service could not send later is no meter to keep
    except ValidationError:
        return None
    auth = item.get("authorization")
    auth = auth if isinstance(auth, dict) else {}
    return Meter(
        uid=uid,
        authorization_uid=_text(item.get("authorization_uid") or auth.get("uid"), 64),
        utility=_text(item.get("utility"), 100),
        vendor_status=_text(item.get("status"), 32),
        status_message=_text(item.get("status_message")),
        is_activated=item.get("is_activated") is True,
        is_archived=item.get("is_archived") is True,
        authorization_revoked=_revoked(auth),
        authorization_expired=_expired(auth, now),
        raw=item,
        synced_at=now,
    )


def _text(value: Any, limit: int | None = None) -> str:
    """A string field from a vendor value: numbers become text, anything else empty."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    return str(value)[:limit]


def _revoked(auth: dict[str, Any]) -> bool:
    """Revoked per the sandbox (`revoked: true`) or the vendor's Authorization object
    (`is_revoked`, or `revoked` holding the revocation time)."""
    revoked = auth.get("revoked")
    stamped = parse_vendor_time(revoked) is not None
    return auth.get("is_revoked") is True or revoked is True or stamped


def _expired(auth: dict[str, Any], now: datetime) -> bool:
    """Expired per the sandbox (`expired: true`), `is_expired`, or an `expires` time past."""
    if auth.get("is_expired") is True or auth.get("expired") is True:
        return True
    expires = parse_vendor_time(auth.get("expires"))
    return expires is not None and expires <= now
