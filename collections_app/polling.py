"""Polling, the safety net behind the webhook: read the events UtilityAPI has not delivered,
process them, mark them delivered, and read the meters still collecting long after their
acceptance. Run by a periodic task (COLLECTIONS_EVENTS_POLL_SECONDS). Every call goes
through the fleet's gate (rate limit, 429 and 401/402 pauses) and is logged as a VendorCall.

Vendor facts (UtilityAPI's events pages): GET /events lists events newest first, at most
1000 a page, with `next` (a full URL or null) and the `is_delivered` filter;
PATCH /events/{uid} with {"is_delivered": true} stops the vendor's retries of that event.
GET /meters takes `uids` (comma separated).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.utils import timezone

from . import gate
from .client import UtilityAPIClient, get_client
from .exceptions import BadResponse, TransientError, UtilityAPIError
from .models import EventSource
from .services import tracking

log = logging.getLogger(__name__)

EVENTS_PATH = "/events"
METERS_PATH = "/meters"
METERS_PER_CALL = 1000  # the vendor's page size: one call answers for this many uids


class PollPaused(TransientError):
    """The fleet's gate forbids calls now; the next scheduled poll tries again."""


def poll() -> dict[str, int]:
    """One round of the safety net; returns what it did. A paused gate ends the round, a
    vendor error ends only the step it happened in."""
    client, counts = get_client(), Counter[str]()
    try:
        undelivered = _step(_read_undelivered, client, counts)
        counts["processed"] = tracking.process_events()
        _step(_acknowledge, client, counts, undelivered or [])
        _step(_poll_meters, client, counts)
    except PollPaused as err:
        log.info("tracking poll stopped: %s", err.description)
        counts["paused"] = 1
    return dict(counts)


def _step(step: Any, client: UtilityAPIClient, counts: Counter[str], *args: Any) -> Any:
    try:
        return step(client, counts, *args)
    except PollPaused:
        raise
    except UtilityAPIError as err:
        log.warning("tracking poll: %s failed: %s", step.__name__.strip("_"), err)
        counts["errors"] += 1
        return None


def _read_undelivered(client: UtilityAPIClient, counts: Counter[str]) -> list[str]:
    """Store every event of GET /events?is_delivered=false; their uids."""
    url: str | None = client.base_url + EVENTS_PATH
    params: dict[str, Any] | None = {"is_delivered": "false"}
    visited: set[str] = set()
    uids: list[str] = []
    while url is not None:
        visited.add(url)
        body = vendor_get(client, url, params, EVENTS_PATH)
        events = body.get("events")
        if not isinstance(events, list):
            raise BadResponse("bad_response", "GET /events answered without an `events` list")
        parsed = _parse(events, counts)
        tracking.receive(parsed, EventSource.POLL)
        uids += [e.uid for e in parsed]
        url, params = client.next_page(body, visited, "GET /events"), None  # `next` has the filter
    counts["events_read"] = len(uids)
    return uids


def _parse(items: list[Any], counts: Counter[str]) -> list[tracking.IncomingEvent]:
    """The page's usable events; a malformed one is skipped (and counted), not fatal."""
    parsed = []
    for item in items:
        try:
            parsed.append(tracking.parse_event(item))
        except tracking.MalformedEvent as err:
            counts["events_malformed"] += 1
            log.warning("tracking poll: skipped an event: %s", err)
    return parsed


def _acknowledge(client: UtilityAPIClient, counts: Counter[str], uids: list[str]) -> None:
    """PATCH each event read as undelivered (now stored and processed) to delivered."""
    for uid in uids:
        url = f"{client.base_url}{EVENTS_PATH}/{quote(uid, safe='')}"
        vendor_patch(client, url, {"is_delivered": True}, EVENTS_PATH + "/{uid}")
        tracking.mark_acknowledged([uid])
        counts["acknowledged"] += 1


def _poll_meters(client: UtilityAPIClient, counts: Counter[str]) -> None:
    """GET /meters?uids=… for meters still collecting COLLECTIONS_METER_POLL_AFTER_SECONDS
    after their acceptance, METERS_PER_CALL uids a call."""
    after = timedelta(seconds=settings.COLLECTIONS_METER_POLL_AFTER_SECONDS)
    uids = tracking.meters_to_poll(timezone.now(), after)
    for start in range(0, len(uids), METERS_PER_CALL):
        batch = uids[start : start + METERS_PER_CALL]
        params = {"uids": ",".join(batch)}
        body = vendor_get(client, client.base_url + METERS_PATH, params, METERS_PATH, len(batch))
        meters = body.get("meters")
        if not isinstance(meters, list):
            raise BadResponse("bad_response", "GET /meters answered without a `meters` list")
        counts["meters_changed"] += tracking.apply_meters(meters, batch)
        counts["meters_polled"] += len(batch)


# --- the gated calls ----------------------------------------------------------------------


def vendor_get(
    client: UtilityAPIClient,
    url: str,
    params: dict[str, Any] | None,
    endpoint: str,
    items: int = 0,
) -> dict[str, Any]:
    return _call(client, "GET", endpoint, items, lambda: client.get_json(url, params))


def vendor_patch(
    client: UtilityAPIClient, url: str, body: dict[str, Any], endpoint: str
) -> dict[str, Any]:
    return _call(client, "PATCH", endpoint, 1, lambda: client.patch_json(url, body))


def _call(client: UtilityAPIClient, method: str, endpoint: str, items: int, send: Any) -> Any:
    """The call through the fleet's gate (which pauses the fleet on a 429 or 401/402),
    logged as a VendorCall. A gate that holds the call ends the round (PollPaused)."""
    started, clock = timezone.now(), time.monotonic()
    try:
        body = gate.call(f"{method} {endpoint}", send)
    except gate.Held as held:
        raise PollPaused("paused", f"UtilityAPI calls are held: {held}") from held
    except UtilityAPIError as err:
        _log(method, endpoint, started, clock, items, err.status_code, err)
        raise
    _log(method, endpoint, started, clock, len(body.get("events") or []) or items, 200, None)
    return body


def _log(
    method: str,
    endpoint: str,
    started: Any,
    clock: float,
    items: int,
    status_code: int | None,
    err: UtilityAPIError | None,
) -> None:
    tracking.record_call(
        method,
        endpoint,
        started,
        int((time.monotonic() - clock) * 1000),
        status_code=status_code,
        items=items,
        error=err.error if err else "",
        error_description=err.description if err else "",
    )
