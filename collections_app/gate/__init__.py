"""The one gated way to UtilityAPI. Every call, to any endpoint, goes through call(): it takes
a slot of the fleet's rate limit, honours the pauses in force, is logged as sent, and a 429
or 401/402 it gets pauses the whole fleet before the caller sees the error."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings

from ..exceptions import AccountError, Throttled

log = logging.getLogger(__name__)
T = TypeVar("T")


class Held(Exception):
    """The gate holds this call back for `wait` seconds (a pause, or no slot soon enough)."""

    def __init__(self, wait: float, paused: bool) -> None:
        super().__init__(f"held {wait:.2f}s ({'paused' if paused else 'rate limit'})")
        self.wait = wait
        self.paused = paused


def call(endpoint: str, send: Callable[[], T], max_wait: float | None = None) -> T:
    """Run `send` (one HTTP call to `endpoint`, e.g. "POST /meters/historical-collection")
    at the fleet's next slot. Raises Held, without calling, when the slot is further than
    `max_wait` seconds away or a pause is in force; the vendor's errors pass through."""
    from . import limiter

    if max_wait is None:
        max_wait = settings.COLLECTIONS_SLOT_MAX_WAIT_SECONDS
    slot = limiter.reserve(max_wait=max_wait)
    if not slot.granted:
        raise Held(slot.wait, slot.paused)
    time.sleep(slot.wait)
    paused = limiter.wait_before_send(endpoint)  # a 429 may have come in while we slept
    if paused:
        raise Held(paused, True)
    try:
        return send()
    except (Throttled, AccountError) as err:
        pause_fleet(endpoint, err)
        raise


def pause_fleet(endpoint: str, err: Throttled | AccountError) -> None:
    from .pauses import pause

    if isinstance(err, Throttled):
        reason = f"429 from UtilityAPI on {endpoint}: Retry-After {err.retry_after or 0:g}s"
        pause("throttle", err.retry_after or 0, reason)
        return
    reason = f"{err.status_code} {err.error} on {endpoint}: {err.description}"
    pause("account", settings.COLLECTIONS_ACCOUNT_PAUSE_SECONDS, reason)
    log.error("UtilityAPI account unusable, all calls paused: %s", reason)
