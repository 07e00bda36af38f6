"""gate.call in real Redis: a call goes out only with a slot and no pause; a 429 or a 401/402
pauses the whole fleet before the caller sees it; without Redis nothing is sent."""

from __future__ import annotations

import time
from typing import Any

import pytest

from collections_app import gate
from collections_app.exceptions import AccountError, PermanentError, Throttled
from collections_app.gate import pauses

ENDPOINT = "POST /meters/historical-collection"


@pytest.fixture(autouse=True)
def clean(redis_db: Any, settings: Any) -> None:
    settings.UTILITYAPI_RATE_LIMIT = 50
    settings.UTILITYAPI_RATE_HEADROOM = 0.0
    settings.COLLECTIONS_SLOT_MAX_WAIT_SECONDS = 2
    settings.COLLECTIONS_ACCOUNT_PAUSE_SECONDS = 300


class Vendor:
    """The HTTP call behind the gate: counts how often it was made."""

    def __init__(self, outcome: Any = "answer") -> None:
        self.calls = 0
        self.outcome = outcome

    def __call__(self) -> Any:
        self.calls += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def paused(kind: str) -> float:
    return max([p.until for p in pauses.in_force() if p.kind == kind], default=0.0)


def test_a_clear_call_goes_out_once_and_is_logged(redis_db: Any) -> None:
    send = Vendor()
    assert gate.call(ENDPOINT, send) == "answer" and send.calls == 1
    (member,) = redis_db.zrange(gate.limiter.CALLS_KEY, 0, -1)
    assert member.decode().startswith(ENDPOINT)


@pytest.mark.parametrize("kind", ["throttle", "account"])
def test_a_pause_in_force_holds_the_call_without_sending(kind: str) -> None:
    pauses.pause(kind, 30, "why")
    send = Vendor()
    with pytest.raises(gate.Held) as caught:
        gate.call(ENDPOINT, send)
    held = caught.value
    assert send.calls == 0 and held.paused and not held.unavailable
    assert 29 < held.wait <= 30 and str(held) == f"held {held.wait:.2f}s (paused)"


def test_a_slot_further_than_the_wait_bound_is_a_rate_limit_hold(settings: Any) -> None:
    settings.UTILITYAPI_RATE_LIMIT = 0.2  # a slot every 5 s, beyond the 2 s bound
    assert gate.call(ENDPOINT, Vendor()) == "answer"
    send = Vendor()
    with pytest.raises(gate.Held) as caught:
        gate.call(ENDPOINT, send)
    held = caught.value
    assert send.calls == 0 and not held.paused and not held.unavailable
    assert 4 < held.wait <= 5 and str(held).endswith("(rate limit)")
    settings.COLLECTIONS_SLOT_MAX_WAIT_SECONDS = 0.001
    with pytest.raises(gate.Held):
        gate.call(ENDPOINT, send, max_wait=0.001)


def test_a_429_pauses_the_fleet_for_its_retry_after_before_the_caller_sees_it() -> None:
    error = Throttled("http_429", "slow down", status_code=429, retry_after=40)
    with pytest.raises(Throttled):
        gate.call(ENDPOINT, Vendor(error))
    assert 39 < paused("throttle") - time.time() <= 40
    (pause,) = pauses.in_force()
    assert pause.reason == f"429 from UtilityAPI on {ENDPOINT}: Retry-After 40s"
    send = Vendor()
    with pytest.raises(gate.Held):
        gate.call(ENDPOINT, send)
    assert send.calls == 0


def test_a_429_without_retry_after_pauses_nobody() -> None:
    with pytest.raises(Throttled):
        gate.call(ENDPOINT, Vendor(Throttled("http_429", "x", status_code=429, retry_after=None)))
    assert pauses.in_force() == []


@pytest.mark.parametrize("status", [401, 402])
def test_an_account_error_stops_the_fleet_for_the_account_pause(status: int) -> None:
    error = AccountError("invalid_token", "token revoked", status_code=status)
    with pytest.raises(AccountError):
        gate.call(ENDPOINT, Vendor(error))
    assert 299 < paused("account") - time.time() <= 300
    (pause,) = pauses.in_force()
    assert pause.reason == f"{status} invalid_token on {ENDPOINT}: token revoked"


def test_other_vendor_errors_pass_through_without_a_pause() -> None:
    with pytest.raises(PermanentError):
        gate.call(ENDPOINT, Vendor(PermanentError("invalid_param", "bad", status_code=400)))
    assert pauses.in_force() == []


def test_without_redis_nothing_is_sent(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    send = Vendor()
    with pytest.raises(gate.Held) as caught:
        gate.call(ENDPOINT, send)
    held = caught.value
    assert send.calls == 0 and held.unavailable and not held.paused
    assert held.wait == gate.UNAVAILABLE_WAIT_SECONDS
    assert str(held) == "held 5.00s (gate unavailable)"


def test_an_operator_reads_in_the_log_why_nothing_was_sent(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Redis the log names the error; an account error is logged with its reason."""
    error = AccountError("invalid_token", "token revoked", status_code=401)
    with caplog.at_level("WARNING", logger="collections_app.gate"), pytest.raises(AccountError):
        gate.call(ENDPOINT, Vendor(error))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            "UtilityAPI account unusable, all calls paused: "
            f"401 invalid_token on {ENDPOINT}: token revoked",
        )
    ]
    caplog.clear()
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    with caplog.at_level("WARNING", logger="collections_app.gate"), pytest.raises(gate.Held):
        gate.call(ENDPOINT, Vendor())
    assert [r.getMessage() for r in caplog.records] == [
        "gate unavailable (ConnectionError): no call to UtilityAPI"
    ]


def test_a_429_arriving_while_a_caller_waits_for_its_slot_holds_its_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another worker's 429 lands while this caller sleeps until its slot: it must not send,
    and it is held as paused (so it waits for the pause, not for a slot)."""
    real_sleep = time.sleep

    def sleep_while_another_worker_is_throttled(seconds: float) -> None:
        pauses.pause("throttle", 30, "429 from another worker")
        real_sleep(seconds)

    monkeypatch.setattr(gate.time, "sleep", sleep_while_another_worker_is_throttled)
    send = Vendor()
    with pytest.raises(gate.Held) as caught:
        gate.call(ENDPOINT, send)
    assert send.calls == 0 and caught.value.paused and not caught.value.unavailable
    assert 29 < caught.value.wait <= 30
