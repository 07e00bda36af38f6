"""The fleet's pauses: after a 429 (until its Retry-After) or a 401/402 (the account is
unusable), no worker calls UtilityAPI. Kept in Redis with a TTL, so a pause ends by itself."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from .. import redis_state

log = logging.getLogger(__name__)
PREFIX = "collections:uapi:"
KEYS = {"throttle": PREFIX + "pause:throttle", "account": PREFIX + "pause:account"}

# KEYS: the pause. ARGV: its value, its length in ms. A longer pause in force is kept.
PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
"""


@dataclass(frozen=True)
class Pause:
    kind: str  # "throttle" (429) or "account" (401/402)
    until: float  # epoch seconds
    reason: str

    @property
    def until_time(self) -> datetime:
        return datetime.fromtimestamp(self.until, UTC)

    @property
    def message(self) -> str:
        what = "Rate limited" if self.kind == "throttle" else "UtilityAPI account unusable"
        return (
            f"{what}: no calls to UtilityAPI until {self.until_time:%H:%M:%S} UTC; "
            f"waiting requests stay submitted. ({self.reason})"
        )


def pause(kind: str, seconds: float, reason: str) -> None:
    """Stop every worker calling for `seconds`; an existing longer pause is kept.

    Called after a call, before its outcome is recorded: a Redis error is logged, never
    raised, so that the answer UtilityAPI gave is not lost with it (without Redis no worker
    gets a send slot anyway)."""
    if seconds <= 0:
        return
    key, ms = KEYS[kind], max(1, int(seconds * 1000))
    value = json.dumps({"until": time.time() + seconds, "reason": reason})
    try:
        redis_state.run(PAUSE, [key], [value, ms])  # one round trip: others see it sooner
    except redis.RedisError as err:
        log.error("cannot store the %s pause in Redis (%s): %s", kind, type(err).__name__, reason)


def in_force() -> list[Pause]:
    """The pauses in force now, for the admin and the dashboard."""
    out = []
    raws = redis_state.connection().mget(list(KEYS.values()))
    for kind, raw in zip(KEYS, raws, strict=True):
        if raw:
            data = json.loads(raw)
            out.append(Pause(kind, float(data["until"]), str(data["reason"])))
    return out
