"""The fleet's shared Redis (REDIS_URL): one client per process, and Lua scripts run by EVALSHA.

The rate limit, the pauses and the sweep's last run live here, so every worker, web process
and beat on every host sees the same values. It is the broker's Redis unless REDIS_URL says
otherwise (a RabbitMQ broker, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import redis
from django.conf import settings
from redis.commands.core import Script

QUICK_TIMEOUT_SECONDS = 0.5


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)


@cache
def _quick_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=QUICK_TIMEOUT_SECONDS, socket_connect_timeout=QUICK_TIMEOUT_SECONDS
    )


def connection() -> redis.Redis:
    return _client(settings.REDIS_URL)


def quick_connection() -> redis.Redis:
    """For figures that are not worth waiting for (call counters, heartbeats): a slow Redis
    never holds up real work."""
    return _quick_client(settings.REDIS_URL)


@cache
def _script(url: str, source: str) -> Script:
    """The script, run by EVALSHA (its text is sent again only if Redis lost it)."""
    return _client(url).register_script(source)


def run(source: str, keys: list[str], args: Sequence[str | int]) -> Any:
    return _script(settings.REDIS_URL, source)(keys=keys, args=args)
