"""The Redis client for telemetry (call counters, worker heartbeats): the fleet's shared
Redis (REDIS_URL), with timeouts short enough that a slow Redis never holds up real work."""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

TIMEOUT_SECONDS = 0.5


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
    )


def connection() -> redis.Redis:
    return _client(settings.REDIS_URL)
