"""The fleet's rate limit, kept in Redis so every worker on every host shares it, and the log
of calls actually sent (which the dashboard's call rate reads).

The limit is a GCRA (generic cell rate algorithm) reservation: each caller is handed the
next free send slot, spaced 1/rate apart, and sleeps until it. Even spacing, unlike a window
counter that lets a whole second's quota out in one burst, keeps network jitter from ever
showing the vendor more than its limit in any one-second window. Clocks come from Redis
(TIME), so hosts with skewed clocks still agree.

A caller that slept for its slot may wake late (a busy host), and late callers bunch up with
punctual ones. So right before each call, wait_before_send() checks the calls sent in the
last second and holds a caller back while that second is full; it also catches a pause set
while the caller slept.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from django.conf import settings

from .. import redis_state
from .pauses import KEYS as PAUSE_KEYS
from .pauses import PREFIX

SLOT_KEY = PREFIX + "next_slot_us"
CALLS_KEY = PREFIX + "calls"  # a sorted set of recent send times
CALLS_KEPT_SECONDS = 300  # how far back the call log reaches
FULL_SECOND_TRIES = 20

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

# KEYS: throttle pause, account pause, calls log. ARGV: cap, member, seconds kept.
# Returns {0, 0} after logging the call when it may go out now; {1, wait_us} during a pause;
# {2, wait_us} while the last second already holds `cap` calls.
LOG_IF_CLEAR = """
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
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]))
return {0, 0}
"""


@dataclass(frozen=True)
class Reservation:
    granted: bool
    wait: float  # seconds until the slot (granted) or until asking again makes sense
    paused: bool


def interval_seconds() -> float:
    rate = settings.UTILITYAPI_RATE_LIMIT * (1 - settings.UTILITYAPI_RATE_HEADROOM)
    return 1.0 / rate


def reserve(max_wait: float) -> Reservation:
    """Ask for the next send slot; granted only if it comes within max_wait seconds."""
    keys = [SLOT_KEY, PAUSE_KEYS["throttle"], PAUSE_KEYS["account"]]
    args = [int(interval_seconds() * 1e6), int(max_wait * 1e6)]
    granted, wait_us, paused = redis_state.run(RESERVE, keys, args)
    return Reservation(bool(granted), wait_us / 1e6, bool(paused))


def window_cap() -> int:
    """Calls allowed in any one second: what the slot spacing itself lets out, rounded up."""
    return max(1, math.ceil(1 / interval_seconds() - 1e-9))


def wait_before_send(endpoint: str) -> float:
    """Right before a call: the seconds left on a pause in force, or 0.0 when the call may go
    out now (it is then logged as sent). While the last second already holds window_cap()
    calls, waits (briefly: until the oldest of them is a second old) and asks again."""
    keys = [PAUSE_KEYS["throttle"], PAUSE_KEYS["account"], CALLS_KEY]
    for _ in range(FULL_SECOND_TRIES):
        member = f"{endpoint} {uuid.uuid4().hex}"
        kind, wait_us = redis_state.run(
            LOG_IF_CLEAR, keys, [window_cap(), member, CALLS_KEPT_SECONDS]
        )
        if kind != 2:
            return wait_us / 1e6
        time.sleep(wait_us / 1e6)
    return 1.0  # a second stayed full throughout: let the caller come back later


def call_rate(window: float = 60.0) -> float:
    """Calls per second sent by the whole fleet over the last `window` seconds."""
    now = time.time()
    return redis_state.connection().zcount(CALLS_KEY, now - window, now) / window
