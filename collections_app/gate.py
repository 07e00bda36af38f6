"""The fleet-wide gate in front of UtilityAPI, kept in Redis so every worker on every host
shares it: one rate limit, and the pauses after a 429 (Retry-After) or a 401/402 (account).

The rate limit is a GCRA (generic cell rate algorithm) reservation: each caller is handed the
next free send slot, spaced 1/rate apart, and sleeps until it. Even spacing, unlike a window
counter that lets a whole second's quota out in one burst, keeps network jitter from ever
showing the vendor more than its limit in any one-second window. Clocks come from Redis
(TIME), so hosts with skewed clocks still agree.

A worker that slept for its slot may wake late (a busy host), and late callers bunch up with
punctual ones. So right before each POST, clear_to_send() checks the calls actually sent in
the last second (the log the dashboard reads too) and holds a caller back while that second
is full; it also catches a pause set while the caller slept.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis
from django.conf import settings
from redis.commands.core import Script

log = logging.getLogger(__name__)
PREFIX = "collections:uapi:"
SLOT_KEY = PREFIX + "next_slot_us"
PAUSE_KEYS = {"throttle": PREFIX + "pause:throttle", "account": PREFIX + "pause:account"}
CALLS_KEY = PREFIX + "calls"  # a sorted set of recent send times, for the dashboard's call rate

# KEYS: slot, throttle pause, account pause. ARGV: interval_us, max_wait_us.
# Returns {granted (0/1), wait_us, paused (0/1)}.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = math.max(redis.call('PTTL', KEYS[2]), redis.call('PTTL', KEYS[3]))
if paused > 0 then return {0, paused * 1000, 1} end
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local wait = slot - now
if wait > tonumber(ARGV[2]) then return {0, wait, 0} end
redis.call('SET', KEYS[1], string.format('%d', slot + tonumber(ARGV[1])), 'PX', 60000)
return {1, wait, 0}
"""


# KEYS: throttle pause, account pause, calls log. ARGV: cap, member.
# Returns {0, 0} after logging the call when it may go out now; {1, wait_us} during a pause;
# {2, wait_us} while the last second already holds `cap` calls.
CLEAR_TO_SEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = math.max(redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2]))
if paused > 0 then return {1, paused * 1000} end
local cap = tonumber(ARGV[1])
local sent = redis.call('ZCOUNT', KEYS[3], '(' .. (now - 1), '+inf')
if sent >= cap then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. (now - 1), '+inf',
                            'WITHSCORES', 'LIMIT', sent - cap, 1)
  return {2, math.max(1, math.ceil((tonumber(oldest[2]) + 1 - now) * 1000000))}
end
redis.call('ZADD', KEYS[3], string.format('%.6f', now), ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 300)
return {0, 0}
"""
CLEAR_TO_SEND_TRIES = 20

# KEYS: the pause. ARGV: its value, its length in ms. A longer pause in force is kept.
PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class Reservation:
    granted: bool
    wait: float  # seconds until the slot (granted) or until asking again makes sense
    paused: bool


@dataclass(frozen=True)
class Pause:
    kind: str  # "throttle" (429) or "account" (401/402)
    until: float  # epoch seconds
    reason: str


@cache
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)


def connection() -> redis.Redis:
    return _redis(settings.REDIS_URL)


@cache
def _script(url: str, source: str) -> Script:
    """The script, run by EVALSHA (its text is sent again only if Redis lost it)."""
    return _redis(url).register_script(source)


def _run(source: str, keys: list[str], args: Sequence[str | int]) -> Any:
    return _script(settings.REDIS_URL, source)(keys=keys, args=args)


def interval_seconds() -> float:
    rate = settings.UTILITYAPI_RATE_LIMIT * (1 - settings.UTILITYAPI_RATE_HEADROOM)
    return 1.0 / rate


def reserve(max_wait: float = 1.0) -> Reservation:
    """Ask for the next send slot; granted only if it comes within max_wait seconds."""
    keys = [SLOT_KEY, PAUSE_KEYS["throttle"], PAUSE_KEYS["account"]]
    args = [int(interval_seconds() * 1e6), int(max_wait * 1e6)]
    granted, wait_us, paused = _run(RESERVE, keys, args)
    return Reservation(bool(granted), wait_us / 1e6, bool(paused))


def window_cap() -> int:
    """Calls allowed in any one second: what the slot spacing itself lets out, rounded up."""
    return max(1, math.ceil(1 / interval_seconds() - 1e-9))


def clear_to_send() -> float:
    """Right before a POST: 0.0 when it may go out now (it is then logged as sent), else the
    seconds left on a pause in force. While the last second already holds window_cap()
    calls, waits (briefly: until the oldest of them is a second old) and asks again."""
    keys = [PAUSE_KEYS["throttle"], PAUSE_KEYS["account"], CALLS_KEY]
    for _ in range(CLEAR_TO_SEND_TRIES):
        kind, wait_us = _run(CLEAR_TO_SEND, keys, [window_cap(), uuid.uuid4().hex])
        if kind != 2:
            return wait_us / 1e6
        time.sleep(wait_us / 1e6)
    return 1.0  # a second stayed full throughout: let the caller come back later


def pause(kind: str, seconds: float, reason: str) -> None:
    """Stop every worker calling for `seconds`; an existing longer pause is kept.

    Called after a POST, before its outcome is recorded: a Redis error is logged, never
    raised, so that the answer UtilityAPI gave is not lost with it (without Redis no worker
    gets a send slot anyway)."""
    if seconds <= 0:
        return
    key, ms = PAUSE_KEYS[kind], max(1, int(seconds * 1000))
    value = json.dumps({"until": time.time() + seconds, "reason": reason})
    try:
        _run(PAUSE, [key], [value, ms])  # one round trip: the other workers see it sooner
    except redis.RedisError as err:
        log.error("cannot store the %s pause in Redis (%s): %s", kind, type(err).__name__, reason)


def clear_pause(kind: str) -> None:
    connection().delete(PAUSE_KEYS[kind])


def pauses() -> list[Pause]:
    """The pauses in force now, for the admin and the dashboard."""
    out = []
    for kind, raw in zip(PAUSE_KEYS, connection().mget(list(PAUSE_KEYS.values())), strict=True):
        if raw:
            data = json.loads(raw)
            out.append(Pause(kind, float(data["until"]), str(data["reason"])))
    return out


def call_rate(window: float = 60.0) -> float:
    """POSTs per second sent by the whole fleet over the last `window` seconds."""
    now = time.time()
    return connection().zcount(CALLS_KEY, now - window, now) / window
