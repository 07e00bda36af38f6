"""Reading one of UtilityAPI's paged listings (GET /authorizations, GET /meters) through the
fleet's gate: each page's items in turn, transient errors retried per page, a short pause
waited out and a long one stopping the read, and every `next` link checked; and storing a
page's objects by uid.

Vendor facts: listings give at most 1000 items a page, with `next` (a full URL, or null on the
last page).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings

from .. import gate
from ..client import UtilityAPIClient
from ..exceptions import BadResponse, Throttled, TransientError
from . import policy

log = logging.getLogger(__name__)

PAGE_ATTEMPTS = 3  # tries per page on 429, 503, 504 and network errors
UPSERT_CHUNK = 500  # rows per INSERT … ON CONFLICT statement
Row = TypeVar("Row")


class SyncPaused(TransientError):
    """The fleet's gate forbids calls to UtilityAPI for longer than a sync waits."""


@dataclass
class PageCounts:
    """What one sync of a listing saw: its pages and objects, and how they were stored."""

    pages: int = 0
    seen: int = 0
    created: int = 0
    invalid: int = 0  # objects without a usable uid: skipped
    revoked: int = 0
    expired: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def read_pages(client: UtilityAPIClient, path: str, endpoint: str, key: str) -> Iterator[list[Any]]:
    """The `key` list of every page of the listing at `path`, first page first. A page is
    yielded once its HTTP call has returned, so the caller writes it with no call in flight;
    an error (a UtilityAPIError, raised after PAGE_ATTEMPTS for transient ones) ends the read.
    """
    url: str | None = client.base_url + path
    visited: set[str] = set()
    while url is not None:
        visited.add(url)
        body = _fetch_page(client, url, endpoint, key)
        yield body[key]
        url = client.next_page(body, visited, endpoint)


def _fetch_page(client: UtilityAPIClient, url: str, endpoint: str, key: str) -> dict[str, Any]:
    """One page's JSON body, through the fleet's gate, retrying transient errors."""
    for attempt in range(1, PAGE_ATTEMPTS + 1):
        try:
            body = _gated_get(client, url, endpoint)
        except TransientError as err:
            wait = _retry_wait(err, attempt)
            if wait is None:
                raise
            log.warning("%s: %s; page retried in %.1fs", endpoint, err, wait)
            time.sleep(wait)
            continue
        if not isinstance(body.get(key), list):
            raise BadResponse("bad_response", f"{endpoint} answered without a `{key}` list")
        return body
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _gated_get(client: UtilityAPIClient, url: str, endpoint: str) -> dict[str, Any]:
    """GET through the gate; a pause short enough is waited out once, a longer one stops
    the read (SyncPaused)."""
    wait = 0.0
    for _ in range(2):
        try:
            return gate.call(endpoint, lambda: client.get_json(url))
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


def rows_by_uid(
    items: Iterable[Any], parse: Callable[[Any, datetime], Row | None], now: datetime
) -> tuple[dict[str, Row], int]:
    """A page's objects parsed into unsaved rows keyed by uid, and how many had no usable uid
    (skipped). A uid twice on a page: the last wins (one row per upsert statement)."""
    rows: dict[str, Row] = {}
    invalid = 0
    for item in items:
        row = parse(item, now)
        if row is None:
            invalid += 1
            continue
        rows[row.uid] = row  # type: ignore[attr-defined]
    return rows, invalid


def upsert(model: Any, rows: Iterable[Any], fields: list[str]) -> None:
    """INSERT … ON CONFLICT (uid) DO UPDATE of `fields`, in chunks."""
    model.objects.bulk_create(
        rows,
        batch_size=UPSERT_CHUNK,
        update_conflicts=True,
        unique_fields=["uid"],
        update_fields=fields,
    )
