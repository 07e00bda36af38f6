"""The fleet-wide gate in front of UtilityAPI, kept in Redis so every worker on every host
shares it: one rate limit, and the pauses after a 429 (Retry-After) or a 401/402 (account).

The rate limit is a GCRA (generic cell rate algorithm) reservation: each caller is handed the
next free send slot, spaced 1/rate apart, and sleeps until it. Even spacing, unlike a window
counter that lets a whole second's quota out in one burst, keeps network jitter from ever
showing the vendor more than its limit in any one-second window. Clocks come from Redis
(TIME), so hosts with skewed clocks still agree.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings

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
    return _redis(settings.CELERY_BROKER_URL)


def interval_seconds() -> float:
    rate = settings.UTILITYAPI_RATE_LIMIT * (1 - settings.UTILITYAPI_RATE_HEADROOM)
    return 1.0 / rate


def reserve(max_wait: float = 1.0) -> Reservation:
    """Ask for the next send slot; granted only if it comes within max_wait seconds."""
    r = connection()
    keys = [SLOT_KEY, PAUSE_KEYS["throttle"], PAUSE_KEYS["account"]]
    args = [int(interval_seconds() * 1e6), int(max_wait * 1e6)]
    granted, wait_us, paused = r.eval(RESERVE, len(keys), *keys, *args)
    return Reservation(bool(granted), wait_us / 1e6, bool(paused))


def paused_for() -> float:
    """Seconds left on any pause in force (0 when calls may go out)."""
    pipe = connection().pipeline()
    for key in PAUSE_KEYS.values():
        pipe.pttl(key)
    return max(0, *pipe.execute()) / 1000


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
        r = connection()
        if r.pttl(key) < ms:
            r.set(key, value, px=ms)
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


def record_call() -> None:
    """Note that a POST went out now (kept for five minutes, for the measured call rate).
    Only the dashboard reads it: a Redis error is logged, never raised, so that the outcome
    of the POST is still recorded."""
    now = time.time()
    try:
        pipe = connection().pipeline()
        pipe.zadd(CALLS_KEY, {uuid.uuid4().hex: now})
        pipe.zremrangebyscore(CALLS_KEY, 0, now - 300)
        pipe.execute()
    except redis.RedisError as err:
        log.warning("cannot count the call in Redis: %s", type(err).__name__)


def call_rate(window: float = 60.0) -> float:
    """POSTs per second sent by the whole fleet over the last `window` seconds."""
    now = time.time()
    return connection().zcount(CALLS_KEY, now - window, now) / window
