"""The gate's Lua scripts in real Redis, branch by branch (mutmut does not mutate them): every
pause kind stops a call at the gate, a full second holds callers back for a bounded wait, the
log of sent calls is trimmed, and a pause is stored and kept as documented."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from collections_app import redis_state
from collections_app.gate import limiter, pauses

KEYS = [pauses.KEYS["throttle"], pauses.KEYS["account"], limiter.CALLS_KEY]


@pytest.fixture(autouse=True)
def clean(redis_db: Any, settings: Any) -> None:
    settings.UTILITYAPI_RATE_LIMIT = 50
    settings.UTILITYAPI_RATE_HEADROOM = 0.0


def redis_now(redis_db: Any) -> float:
    seconds, micros = redis_db.time()
    return seconds + micros / 1e6


def log_if_clear(cap: int, member: str = "POST /x 1") -> list[int]:
    return redis_state.run(limiter.LOG_IF_CLEAR, KEYS, [cap, member, limiter.CALLS_KEPT_SECONDS])


# --- RESERVE ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["throttle", "account"])
def test_every_pause_kind_refuses_a_slot(kind: str, redis_db: Any) -> None:
    """A 429's pause and a 401/402's account pause both stop every caller at the gate."""
    pauses.pause(kind, 30, "why")
    slot = limiter.reserve(max_wait=60)
    assert not slot.granted and slot.paused and 29 < slot.wait <= 30
    assert redis_db.get(limiter.SLOT_KEY) is None  # no slot was taken


def test_the_longer_of_two_pauses_decides_the_wait() -> None:
    pauses.pause("throttle", 5, "429")
    pauses.pause("account", 40, "402")
    assert 39 < limiter.reserve(max_wait=60).wait <= 40


def test_a_free_slot_is_granted_now_and_the_next_one_interval_later(redis_db: Any) -> None:
    first = limiter.reserve(max_wait=1)
    assert first.granted and not first.paused and first.wait < 0.005
    next_slot_us = int(redis_db.get(limiter.SLOT_KEY))
    assert 0.015 < next_slot_us / 1e6 - redis_now(redis_db) <= 0.02  # 1/50 s on
    assert 59_000 < redis_db.pttl(limiter.SLOT_KEY) <= 60_000


def test_a_slot_further_than_the_wait_bound_is_refused_and_not_taken(
    settings: Any, redis_db: Any
) -> None:
    settings.UTILITYAPI_RATE_LIMIT = 0.1  # one call every 10 s
    assert limiter.reserve(max_wait=1).granted
    taken = redis_db.get(limiter.SLOT_KEY)
    refused = limiter.reserve(max_wait=1)
    assert not refused.granted and not refused.paused and 9 < refused.wait <= 10
    assert redis_db.get(limiter.SLOT_KEY) == taken
    within = limiter.reserve(max_wait=11)
    assert within.granted and 9 < within.wait <= 10


# --- LOG_IF_CLEAR -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["throttle", "account"])
def test_every_pause_kind_stops_a_call_right_before_it_is_sent(kind: str, redis_db: Any) -> None:
    pauses.pause(kind, 20, "why")
    flag, wait_us = log_if_clear(cap=50)
    assert flag == 1 and 19e6 < wait_us <= 20e6
    assert 19 < limiter.wait_before_send("POST /x") <= 20
    assert redis_db.zcard(limiter.CALLS_KEY) == 0  # nothing logged as sent


def test_a_clear_call_is_logged_as_sent_at_redis_time(redis_db: Any) -> None:
    assert log_if_clear(cap=50, member="POST /x abc") == [0, 0]
    ((member, score),) = redis_db.zrange(limiter.CALLS_KEY, 0, -1, withscores=True)
    assert member == b"POST /x abc" and abs(score - redis_now(redis_db)) < 1


def test_a_full_second_holds_the_caller_until_its_oldest_call_is_a_second_old(
    redis_db: Any,
) -> None:
    now = redis_now(redis_db)
    redis_db.zadd(limiter.CALLS_KEY, {"a": now - 0.7, "b": now - 0.4, "c": now - 0.1})
    flag, wait_us = log_if_clear(cap=3)
    assert flag == 2 and 0.25e6 < wait_us <= 0.3e6  # until "a" is a second old
    flag, wait_us = log_if_clear(cap=2)
    assert flag == 2 and 0.55e6 < wait_us <= 0.6e6  # two may be in the second: until "b" is
    assert redis_db.zcard(limiter.CALLS_KEY) == 3  # the held call is not logged


def test_calls_older_than_a_second_do_not_fill_it(redis_db: Any) -> None:
    now = redis_now(redis_db)
    redis_db.zadd(limiter.CALLS_KEY, {"a": now - 1.5, "b": now - 1.1})
    assert log_if_clear(cap=1) == [0, 0]


def test_the_wait_for_a_full_second_is_never_more_than_a_second(redis_db: Any) -> None:
    now = redis_now(redis_db)
    redis_db.zadd(limiter.CALLS_KEY, {"just-sent": now})
    flag, wait_us = log_if_clear(cap=1)
    assert flag == 2 and 0.9e6 < wait_us <= 1e6


def test_the_log_of_sent_calls_is_trimmed_to_what_the_dashboard_reads(redis_db: Any) -> None:
    """Without the trim the sorted set would grow by one member per call, forever."""
    now = redis_now(redis_db)
    kept = limiter.CALLS_KEPT_SECONDS
    redis_db.zadd(limiter.CALLS_KEY, {"old": now - kept - 5, "recent": now - kept + 5})
    assert log_if_clear(cap=50, member="new") == [0, 0]
    members = {m.decode() for m in redis_db.zrange(limiter.CALLS_KEY, 0, -1)}
    assert members == {"recent", "new"}


def test_wait_before_send_logs_each_call_it_clears_under_the_endpoint(redis_db: Any) -> None:
    assert limiter.wait_before_send("GET /meters") == 0.0
    (member,) = redis_db.zrange(limiter.CALLS_KEY, 0, -1)
    assert member.decode().startswith("GET /meters ")


def test_the_call_rate_is_over_the_window_asked(redis_db: Any) -> None:
    now = time.time()
    redis_db.zadd(limiter.CALLS_KEY, {f"c{i}": now - i for i in range(20)})  # 1 a second
    assert limiter.call_rate(window=10) == pytest.approx(1.0, abs=0.11)
    assert limiter.call_rate(window=40) == pytest.approx(0.5, abs=0.03)


def test_the_dashboards_call_rate_is_per_second_over_the_last_minute(redis_db: Any) -> None:
    now = time.time()
    redis_db.zadd(limiter.CALLS_KEY, {f"c{i}": now - 1 - i for i in range(30)})
    redis_db.zadd(limiter.CALLS_KEY, {"an hour ago": now - 3600})
    assert limiter.call_rate() == pytest.approx(0.5)


def test_a_caller_finding_the_last_second_full_waits_then_sends(redis_db: Any) -> None:
    """The second holds window_cap() calls already: wait_before_send waits (under a second)
    for the oldest to age out, then clears and logs this call instead of refusing it."""
    cap = limiter.window_cap()
    for i in range(cap):
        assert log_if_clear(cap, f"POST /x {i}") == [0, 0]
    assert limiter.wait_before_send("POST /y") == 0.0
    assert redis_db.zcard(limiter.CALLS_KEY) == cap + 1
    (newest,) = redis_db.zrange(limiter.CALLS_KEY, -1, -1)
    assert newest.decode().startswith("POST /y ")


def test_below_one_call_a_second_a_second_still_lets_one_call_out(settings: Any) -> None:
    settings.UTILITYAPI_RATE_LIMIT = 0.5
    assert limiter.window_cap() == 1
    settings.UTILITYAPI_RATE_LIMIT = 50
    assert limiter.window_cap() == 50


# --- PAUSE --------------------------------------------------------------------------------


def test_a_retry_after_of_one_second_pauses_the_fleet(redis_db: Any) -> None:
    pauses.pause("throttle", 1, "429: Retry-After 1s")
    assert 900 < redis_db.pttl(pauses.KEYS["throttle"]) <= 1000
    assert not limiter.reserve(max_wait=60).granted


@pytest.mark.parametrize(("seconds", "ms"), [(0.5, 500), (0.0004, 1), (2.25, 2250)])
def test_short_pauses_last_their_milliseconds(redis_db: Any, seconds: float, ms: int) -> None:
    pauses.pause("throttle", seconds, "short")
    assert ms - 50 < redis_db.pttl(pauses.KEYS["throttle"]) <= ms


@pytest.mark.parametrize("seconds", [0, -3])
def test_no_pause_without_a_positive_length(redis_db: Any, seconds: float) -> None:
    pauses.pause("account", seconds, "nothing")
    assert pauses.in_force() == [] and redis_db.exists(pauses.KEYS["account"]) == 0


def test_a_longer_pause_replaces_a_shorter_one(redis_db: Any) -> None:
    pauses.pause("throttle", 2, "first, short")
    pauses.pause("throttle", 60, "then long")
    (pause,) = pauses.in_force()
    assert pause.reason == "then long" and redis_db.pttl(pauses.KEYS["throttle"]) > 59_000


def test_a_pause_says_until_when_and_why(redis_db: Any) -> None:
    before = time.time()
    pauses.pause("account", 300, "402 payment_required on POST /x: pay up")
    data = json.loads(redis_db.get(pauses.KEYS["account"]))
    assert before + 300 <= data["until"] <= time.time() + 300
    (pause,) = pauses.in_force()
    assert (pause.kind, pause.until, pause.reason) == (
        "account",
        data["until"],
        "402 payment_required on POST /x: pay up",
    )
    assert pause.until_time.timestamp() == pytest.approx(data["until"])
    assert pause.message == (
        f"UtilityAPI account unusable: no calls to UtilityAPI until "
        f"{pause.until_time:%H:%M:%S} UTC; waiting requests stay submitted. "
        "(402 payment_required on POST /x: pay up)"
    )


def test_a_throttle_pause_is_a_rate_limit_to_the_operator() -> None:
    pauses.pause("throttle", 10, "429")
    (pause,) = pauses.in_force()
    assert pause.kind == "throttle" and pause.message.startswith("Rate limited: no calls")


def test_both_pauses_are_listed_throttle_first() -> None:
    pauses.pause("account", 10, "402")
    pauses.pause("throttle", 10, "429")
    assert [p.kind for p in pauses.in_force()] == ["throttle", "account"]


def test_a_pause_redis_cannot_store_is_logged_not_raised(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The call's answer must still be recorded when Redis is down."""
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    pauses.pause("throttle", 5, "429 from UtilityAPI")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot store the throttle pause in Redis (ConnectionError): 429 from UtilityAPI"
    ]
