"""The one gated way to UtilityAPI. Every call, to any endpoint, goes through call(): it takes
a slot of the fleet's rate limit, honours the pauses in force, is logged as sent, and a 429
or 401/402 it gets pauses the whole fleet before the caller sees the error."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from django.conf import settings

from ..exceptions import AccountError, Throttled

log = logging.getLogger(__name__)
T = TypeVar("T")


UNAVAILABLE_WAIT_SECONDS = 5.0  # without Redis no slot can be had: ask again after this


class Held(Exception):
    """The gate holds this call back for `wait` seconds: a pause, no slot soon enough, or
    (`unavailable`) Redis, which keeps the gate, not answering."""

    def __init__(self, wait: float, paused: bool, unavailable: bool = False) -> None:
        why = "gate unavailable" if unavailable else "paused" if paused else "rate limit"
        super().__init__(f"held {wait:.2f}s ({why})")
        self.wait = wait
        self.paused = paused
        self.unavailable = unavailable


def call(endpoint: str, send: Callable[[], T], max_wait: float | None = None) -> T:
    """Run `send` (one HTTP call to `endpoint`, e.g. "POST /meters/historical-collection")
    at the fleet's next slot. Raises Held, without calling, when the slot is further than
    `max_wait` seconds away or a pause is in force; the vendor's errors pass through."""
    from . import limiter

    if max_wait is None:
        max_wait = settings.COLLECTIONS_SLOT_MAX_WAIT_SECONDS
    try:
        slot = limiter.reserve(max_wait=max_wait)
        if not slot.granted:
            raise Held(slot.wait, slot.paused)
        time.sleep(slot.wait)
        paused = limiter.wait_before_send(endpoint)  # a 429 may have come in while we slept
    except redis.RedisError as err:
        log.warning("gate unavailable (%s): no call to UtilityAPI", type(err).__name__)
        raise Held(UNAVAILABLE_WAIT_SECONDS, False, unavailable=True) from err
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
