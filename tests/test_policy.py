"""The retry policy (services/policy.py): what one UtilityAPI answer does to a request's status,
attempts, next attempt and error, and how long a retry waits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from collections_app.client import Accepted
from collections_app.exceptions import (
    AccountError,
    BadResponse,
    PermanentError,
    Throttled,
    TransientError,
)
from collections_app.models import CollectionRequest, Status
from collections_app.services import policy

pytestmark = pytest.mark.django_db  # a move to pending or failed is made inside a transaction

NOW = timezone.now()


def request(meters: list[str] | None = None, **fields: Any) -> CollectionRequest:
    """A submitted request in memory, as a claim hands it to the policy."""
    return CollectionRequest(
        meters=meters or ["m-1", "m-2"],
        status=Status.SUBMITTED,
        next_attempt_at=NOW,
        **fields,
    )


def test_an_acceptance_after_failures_counts_every_attempt() -> None:
    """attempts counts the POSTs a request took: a success after three failures is the 4th."""
    row = request(attempts=3, error="http_503", error_description="down", last_http_status=503)
    policy.apply(row, Accepted(["m-1", "m-2"], 12), NOW)
    assert row.attempts == 4


def test_an_acceptance_is_pending_without_an_error_or_a_next_attempt() -> None:
    """A pending request shows no stale error and is never scheduled again."""
    row = request(attempts=1, error="http_503", error_description="down", last_http_status=503)
    policy.apply(row, Accepted(["m-2", "other"], 12), NOW)
    assert row.status == Status.PENDING and row.last_http_status == 200
    assert (row.accepted_meters, row.ignored_meters) == (["m-2"], ["m-1"])
    assert (row.error, row.error_description, row.next_attempt_at) == ("", "", None)


def test_an_acceptance_that_dropped_every_meter_fails_the_request() -> None:
    row = request(attempts=0)
    policy.apply(row, Accepted(["someone-else"], 12), NOW)
    assert row.status == Status.FAILED and row.error == "expired_or_revoked"
    assert "revoked or expired" in row.error_description
    assert (row.accepted_meters, row.ignored_meters) == ([], ["m-1", "m-2"])
    assert row.next_attempt_at is None and row.attempts == 1 and row.last_http_status == 200


def test_a_429_waits_for_its_retry_after_and_spends_no_attempt() -> None:
    row = request(attempts=2)
    policy.apply(row, Throttled("http_429", "slow down", status_code=429, retry_after=7.5), NOW)
    assert row.status == Status.SUBMITTED and row.attempts == 2
    assert row.next_attempt_at == NOW + timedelta(seconds=7.5)
    assert (row.error, row.error_description, row.last_http_status) == (
        "http_429",
        "slow down",
        429,
    )


def test_a_429_without_retry_after_may_be_tried_at_once() -> None:
    row = request()
    policy.apply(row, Throttled("http_429", "slow", status_code=429, retry_after=None), NOW)
    assert row.next_attempt_at == NOW and row.attempts == 0


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("invalid_param", "bad meter", status_code=400),
        AccountError("payment_required", "no money", status_code=402),
    ],
)
def test_a_permanent_error_fails_at_once_and_is_never_scheduled_again(error: Any) -> None:
    row = request(attempts=1)
    policy.apply(row, error, NOW)
    assert row.status == Status.FAILED and row.attempts == 2
    assert (row.error, row.error_description) == (error.error, error.description)
    assert row.next_attempt_at is None and row.last_http_status == error.status_code


def test_a_transient_error_is_retried_after_the_backoff(settings: Any) -> None:
    settings.COLLECTIONS_MAX_ATTEMPTS = 8
    settings.COLLECTIONS_RETRY_BASE_SECONDS = 10
    settings.COLLECTIONS_RETRY_MAX_SECONDS = 600
    row = request(attempts=2)
    policy.apply(row, TransientError("http_503", "down", status_code=503), NOW)
    assert row.status == Status.SUBMITTED and row.attempts == 3
    wait = (row.next_attempt_at - NOW).total_seconds()
    assert 20 <= wait <= 40  # the 3rd attempt's step is 40 s: half fixed, half random
    assert (row.error, row.error_description, row.last_http_status) == ("http_503", "down", 503)


def test_the_last_allowed_attempt_gives_up_without_a_next_attempt(settings: Any) -> None:
    """retries_exhausted is final: no next attempt, so nothing ever claims it again."""
    settings.COLLECTIONS_MAX_ATTEMPTS = 3
    row = request(attempts=2)
    policy.apply(row, BadResponse("bad_response", "html", status_code=200), NOW)
    assert row.status == Status.FAILED and row.attempts == 3
    assert row.error == "retries_exhausted" and row.next_attempt_at is None
    assert row.error_description == "Gave up after 3 attempts; the last: bad_response: html"
    assert row.last_http_status == 200


def test_one_attempt_short_of_the_limit_is_still_retried(settings: Any) -> None:
    settings.COLLECTIONS_MAX_ATTEMPTS = 3
    row = request(attempts=1)
    policy.apply(row, TransientError("timeout", "slow"), NOW)
    assert row.status == Status.SUBMITTED and row.attempts == 2
    assert row.last_http_status is None


@pytest.mark.parametrize(("attempts", "step"), [(0, 4), (1, 4), (2, 8), (3, 16), (5, 50)])
def test_the_backoff_spreads_over_the_upper_half_of_its_step(
    settings: Any, attempts: int, step: float
) -> None:
    """Equal jitter: each wait lies in [step/2, step], and the waits cover that whole range
    (a narrower spread bunches retries; a wider one waits too little or too long)."""
    settings.COLLECTIONS_RETRY_BASE_SECONDS = 4
    settings.COLLECTIONS_RETRY_MAX_SECONDS = 50
    waits = [policy.backoff(attempts) for _ in range(2000)]
    assert all(step / 2 <= w <= step for w in waits)
    assert min(waits) < step / 2 + step / 20 and max(waits) > step - step / 20
