"""Figures that scan the whole table, computed once for every viewer.

At a million requests, counting them by status and bucketing a day of them takes a few
hundred milliseconds however well indexed. Every open dashboard refreshes every
OPS_REFRESH_SECONDS and Prometheus scrapes /metrics on its own clock, so those figures are
kept in the cache (Redis) and recomputed at most once every OPS_FIGURES_MAX_AGE_SECONDS:
whoever finds them stale recomputes them (one process at a time, behind a cache lock) while
the others are served the previous ones. The result carries `figures_as_of`. When the cache
does not answer they are computed for the caller; with a maximum age of 0 they always are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY, LOCK = "ops:whole_table", "ops:whole_table:lock"
LOCK_SECONDS = 60  # longer than any computation; frees the lock if its holder died


def whole_table(now: datetime, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`compute()`'s figures, as fresh as OPS_FIGURES_MAX_AGE_SECONDS asks."""
    max_age = settings.OPS_FIGURES_MAX_AGE_SECONDS
    if max_age <= 0:
        return _stamped(now, compute())
    try:
        kept = cache.get(KEY)
        if kept and time.time() - kept["computed_at"] < max_age:
            return kept["figures"]
        if kept and not cache.add(LOCK, 1, LOCK_SECONDS):
            return kept["figures"]  # someone else is recomputing them
    except RedisError as err:  # the cache (Redis) down: the dashboard must still answer
        log.warning("dashboard figures not shared: the cache does not answer (%s)", err)
        return _stamped(now, compute())
    figures = _stamped(now, compute())
    try:
        cache.set(KEY, {"computed_at": time.time(), "figures": figures}, max_age * 10)
        cache.delete(LOCK)
    except RedisError as err:
        log.warning("dashboard figures not shared: the cache does not answer (%s)", err)
    return figures


def _stamped(now: datetime, figures: dict[str, Any]) -> dict[str, Any]:
    return {**figures, "figures_as_of": now}
