"""The meter registry: sync it from UtilityAPI's GET /meters, and trigger collections for many
registered meters at once (the admin's bulk action). Operator doc: docs/meters.md.

Vendor facts (shared/utilityapi-notes.md, "Meters"): GET /meters lists at most 1000 meters a
page, newest first, with `next` (a full URL, or null on the last page); meters carry `uid`,
`authorization_uid`, `utility`, `status`, `is_activated`, `is_archived` and more, and clients
must handle unknown attributes gracefully. Revocation and expiry belong to the Authorization;
the built-in sandbox inlines them as `authorization: {revoked, expired}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import gate, services
from .client import UtilityAPIClient, get_client
from .exceptions import BadResponse, Throttled, TransientError
from .models import CollectionRequest, Meter, Source, Status
from .validation import clean_meters

log = logging.getLogger(__name__)

METERS_PATH = "/meters"
UPSERT_CHUNK = 500  # rows per INSERT … ON CONFLICT statement
MAX_PAGES = 10_000  # a `next` chain longer than this is a vendor loop, not a registry
PAGE_ATTEMPTS = 3  # tries per page on 429, 503, 504 and network errors
MAX_WAIT_SECONDS = 60.0  # the longest Retry-After or fleet pause a sync waits out
SLOT_MAX_WAIT_SECONDS = 5.0
SYNCED_FIELDS = [
    "authorization_uid",
    "utility",
    "vendor_status",
    "status_message",
    "is_activated",
    "is_archived",
    "authorization_revoked",
    "authorization_expired",
    "raw",
    "synced_at",
]
COLLECTABLE = Q(authorization_revoked=False, authorization_expired=False, is_archived=False)


# --- sync ---------------------------------------------------------------------------------


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
        url = _next_url(client, body, visited)
    log.info("meter sync: %s", result)
    return result


def _fetch_page(client: UtilityAPIClient, url: str) -> dict[str, Any]:
    """One page's JSON body, through the fleet's rate limit, retrying transient errors."""
    for attempt in range(1, PAGE_ATTEMPTS + 1):
        _wait_for_slot()
        try:
            body = client.get_json(url)
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


def _retry_wait(err: TransientError, attempt: int) -> float | None:
    """Seconds before trying the page again, or None to give up (and re-raise)."""
    if isinstance(err, Throttled):
        _pause_fleet(err)
    if attempt >= PAGE_ATTEMPTS:
        return None
    wait = (err.retry_after or 0.0) if isinstance(err, Throttled) else services.backoff(attempt)
    return wait if wait <= MAX_WAIT_SECONDS else None


def _pause_fleet(err: Throttled) -> None:
    """A 429 holds every worker until its Retry-After (STYLE.md principle 4)."""
    try:
        gate.pause("throttle", err.retry_after or 0, f"429 on GET /meters: {err.description}")
    except redis.RedisError as redis_err:
        log.warning("meter sync: cannot pause the fleet (%s)", type(redis_err).__name__)


def _wait_for_slot() -> None:
    """Take a send slot from the fleet's shared rate limit; GETs count against the account's
    limit like POSTs. Without Redis the sync goes on: no worker can send then either."""
    try:
        slot = gate.reserve(max_wait=SLOT_MAX_WAIT_SECONDS)
        if slot.paused and slot.wait <= MAX_WAIT_SECONDS:
            time.sleep(slot.wait)
            slot = gate.reserve(max_wait=SLOT_MAX_WAIT_SECONDS)
    except redis.RedisError as err:
        log.warning("meter sync: rate-limit gate unavailable (%s)", type(err).__name__)
        return
    if not slot.granted:
        reason = "paused" if slot.paused else "rate limit"
        raise SyncPaused("paused", f"UtilityAPI calls are held for {slot.wait:.0f}s ({reason})")
    time.sleep(slot.wait)


def _next_url(client: UtilityAPIClient, body: dict[str, Any], visited: set[str]) -> str | None:
    """The page's `next` link, checked: it must stay on the API's host, since the Bearer
    token goes with it (STYLE.md principle 5), and must not loop."""
    nxt = body.get("next")
    if nxt is None or nxt == "":
        return None
    if not isinstance(nxt, str) or not nxt.startswith(("http://", "https://")):
        raise BadResponse("bad_response", f"GET /meters gave an unusable next link: {nxt!r}")
    if urlsplit(nxt)[:2] != urlsplit(client.base_url)[:2]:
        raise BadResponse("bad_response", "GET /meters gave a next link to another host")
    if nxt in visited or len(visited) >= MAX_PAGES:
        where = urlsplit(nxt).path
        raise BadResponse("bad_response", f"GET /meters paging does not end ({where} again)")
    return nxt


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
    return auth.get("is_revoked") is True or revoked is True or _is_timestamp(revoked)


def _expired(auth: dict[str, Any], now: datetime) -> bool:
    """Expired per the sandbox (`expired: true`), `is_expired`, or an `expires` time past."""
    if auth.get("is_expired") is True or auth.get("expired") is True:
        return True
    expires = _parse_time(auth.get("expires"))
    return expires is not None and expires <= now


def _is_timestamp(value: Any) -> bool:
    return _parse_time(value) is not None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value.strip())
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


# --- bulk trigger -------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerPlan:
    """What triggering a selection of meters would do; skip reasons may overlap."""

    selected: int
    collectable: int
    revoked: int
    expired: int
    archived: int
    waiting: int  # collectable meters whose last request has not been sent yet

    @property
    def skipped(self) -> int:
        return self.selected - self.collectable

    @property
    def requests(self) -> int:
        """How many collection requests the collectable meters are bundled into."""
        return -(-self.collectable // batch_size())


class TriggerConflict(Exception):
    """The selection changed after the confirmation page was shown; nothing was created."""


def batch_size() -> int:
    return settings.COLLECTIONS_MAX_METERS_PER_REQUEST


def plan(meters: QuerySet[Meter]) -> TriggerPlan:
    """Count the selection with one query: collectable meters and why the others are skipped."""
    counts = meters.order_by().aggregate(
        selected=Count("pk"),
        collectable=Count("pk", filter=COLLECTABLE),
        revoked=Count("pk", filter=Q(authorization_revoked=True)),
        expired=Count("pk", filter=Q(authorization_expired=True)),
        archived=Count("pk", filter=Q(is_archived=True)),
        waiting=Count("pk", filter=COLLECTABLE & Q(last_request__status=Status.SUBMITTED)),
    )
    return TriggerPlan(**counts)


def trigger(
    meters: QuerySet[Meter],
    collection_duration: int | None,
    *,
    requested_by: Any,
    expected: int,
    shown_at: datetime,
) -> list[CollectionRequest]:
    """Create collection requests for the selection's collectable meters, bundled
    COLLECTIONS_MAX_METERS_PER_REQUEST a request (storing them points each meter's
    last_request at its request). The requests are sent once the transaction commits.

    The meter rows stay locked until then, and the trigger is refused (TriggerConflict) when
    the collectable count is no longer `expected` or a meter was triggered after `shown_at`
    (a double submit, or another operator): the operator confirms what was shown, no more.
    """
    with transaction.atomic():
        rows = meters.filter(COLLECTABLE).select_for_update(of=("self",)).order_by("uid")
        uids = list(rows.values_list("uid", flat=True))
        _check_unchanged(meters, uids, expected, shown_at)
        size = batch_size()
        groups = [uids[i : i + size] for i in range(0, len(uids), size)]
        return services.request_collections(
            groups, collection_duration, source=Source.REGISTRY, requested_by=requested_by
        )


def _check_unchanged(
    meters: QuerySet[Meter], uids: Sequence[str], expected: int, shown_at: datetime
) -> None:
    if not uids:
        raise TriggerConflict("None of the selected meters can be collected.")
    if len(uids) != expected:
        raise TriggerConflict(
            f"The selection changed since the page was shown: {len(uids)} collectable "
            f"meter(s) now, {expected} then. Check the numbers and confirm again."
        )
    recent = meters.filter(COLLECTABLE, last_request__created__gte=shown_at).count()
    if recent:
        raise TriggerConflict(
            f"{recent} of these meter(s) were triggered after this page was shown (a second "
            "submit, or another operator). Nothing was created."
        )
