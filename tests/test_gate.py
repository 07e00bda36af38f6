"""The fleet gate in real Redis: slot spacing, pauses, the measured call rate."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from collections_app import redis_state
from collections_app.gate import limiter, pauses


@pytest.fixture(autouse=True)
def clean(redis_db: Any, settings: Any) -> None:
    settings.UTILITYAPI_RATE_LIMIT = 50
    settings.UTILITYAPI_RATE_HEADROOM = 0.0


def paused_for() -> float:
    """Seconds left on the longest pause in force, read through pauses.in_force()."""
    return max([p.until - time.time() for p in pauses.in_force()], default=0.0)


def test_slots_are_spaced_one_interval_apart() -> None:
    waits = [limiter.reserve(max_wait=5).wait for _ in range(10)]
    assert waits[0] == pytest.approx(0, abs=0.005)
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert all(gap == pytest.approx(0.02, abs=0.004) for gap in gaps), gaps


def test_headroom_widens_the_spacing(settings: Any) -> None:
    settings.UTILITYAPI_RATE_HEADROOM = 0.5
    limiter.reserve(max_wait=1)
    assert limiter.reserve(max_wait=1).wait == pytest.approx(0.04, abs=0.005)


def test_a_slot_beyond_max_wait_is_refused_and_not_taken() -> None:
    for _ in range(5):
        limiter.reserve(max_wait=1)
    refused = limiter.reserve(max_wait=0.05)
    assert not refused.granted and not refused.paused and refused.wait > 0.05
    assert limiter.reserve(max_wait=1).wait == pytest.approx(refused.wait, abs=0.01)


def test_concurrent_callers_never_share_a_slot() -> None:
    waits: list[float] = []

    def take() -> None:
        for _ in range(20):
            waits.append(limiter.reserve(max_wait=10).wait)

    threads = [threading.Thread(target=take) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(waits) == 100
    # 100 slots at 50/s need ~2 s; reserved from a shared clock they cannot overlap.
    assert max(waits) >= 1.9


def test_a_pause_stops_everyone_and_says_why() -> None:
    pauses.pause("throttle", 3, "429 from UtilityAPI: Retry-After 3s")
    refused = limiter.reserve(max_wait=1)
    assert not refused.granted and refused.paused
    assert 2.5 < refused.wait <= 3
    assert 2.5 < paused_for() <= 3
    (pause,) = pauses.in_force()
    assert pause.kind == "throttle" and "Retry-After 3s" in pause.reason
    redis_state.connection().delete(pauses.KEYS["throttle"])
    assert limiter.reserve(max_wait=1).granted and paused_for() == 0


def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    pauses.pause("account", 60, "402 payment_required")
    pauses.pause("account", 1, "later, shorter")
    (pause,) = pauses.in_force()
    assert pause.reason == "402 payment_required" and paused_for() > 50


def test_call_rate_counts_recent_calls() -> None:
    for _ in range(30):
        assert limiter.wait_before_send("POST /x") == 0.0  # each call it clears is logged as sent
    assert limiter.call_rate(window=60) == pytest.approx(0.5)


def _sent_in_the_last_second(redis_db: Any, calls: int, age: float) -> None:
    seconds, micros = redis_db.time()
    now = seconds + micros / 1e6
    redis_db.zadd(limiter.CALLS_KEY, {f"old-{i}": now - age for i in range(calls)})


def test_clear_to_send_logs_the_call_for_the_measured_rate() -> None:
    assert limiter.wait_before_send("POST /x") == 0.0
    assert limiter.call_rate(window=60) == pytest.approx(1 / 60)


def test_clear_to_send_holds_a_caller_back_while_the_last_second_is_full(
    redis_db: Any,
) -> None:
    _sent_in_the_last_second(redis_db, limiter.window_cap(), age=0.8)  # a bunch of late wakers
    started = time.monotonic()
    assert limiter.wait_before_send("POST /x") == 0.0
    assert 0.15 <= time.monotonic() - started < 0.5  # until the bunch was a second old
    assert redis_db.zcard(limiter.CALLS_KEY) == limiter.window_cap() + 1


def test_clear_to_send_reports_a_pause_and_logs_nothing(redis_db: Any) -> None:
    pauses.pause("throttle", 2, "429 from UtilityAPI: Retry-After 2s")
    assert 1.5 < limiter.wait_before_send("POST /x") <= 2
    assert redis_db.zcard(limiter.CALLS_KEY) == 0


def test_window_cap_is_what_the_spacing_lets_out(settings: Any) -> None:
    assert limiter.window_cap() == 50
    settings.UTILITYAPI_RATE_HEADROOM = 0.03
    assert limiter.window_cap() == 49  # 48.5 calls a second, rounded up
