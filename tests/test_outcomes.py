"""Recording what a call answered (services/outcomes.py) against PostgreSQL: every row of a
batch saved, one attempt row per request with the call's figures, and only the lease holder's
write landing."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from collections_app.client import Accepted
from collections_app.exceptions import PermanentError, Throttled, TransientError
from collections_app.models import Attempt, CollectionRequest, Status
from collections_app.services import leases, outcomes
from collections_app.signals import request_resolved

pytestmark = pytest.mark.django_db
STARTED = timezone.now() - timedelta(seconds=3)


def call(task_id: str = "task-9") -> outcomes.Call:
    return outcomes.Call(uuid.uuid4(), STARTED, 1234, task_id)


def claimed(*meter_lists: list[str]) -> list[CollectionRequest]:
    """One batch leased by a worker: requests of the same duration, all due."""
    now = timezone.now()
    rows = [
        CollectionRequest.objects.create(
            meters=m, collection_duration=12, next_attempt_at=now - timedelta(seconds=10 - i)
        )
        for i, m in enumerate(meter_lists)
    ]
    batch = leases.claim(rows[0].pk, "task-9")
    assert len(batch) == len(rows)
    return batch


def fresh(row: CollectionRequest) -> CollectionRequest:
    return CollectionRequest.objects.get(pk=row.pk)


def taken_over(row: CollectionRequest) -> uuid.UUID:
    """The sweep freed the row and another worker leased it: it holds a new token."""
    token = uuid.uuid4()
    CollectionRequest.objects.filter(pk=row.pk).update(
        lease_token=token, lease_expires_at=timezone.now() + timedelta(seconds=60)
    )
    return token


@pytest.fixture
def resolved() -> Any:
    """The requests `request_resolved` is sent for (run the recording in
    django_capture_on_commit_callbacks(execute=True): the signal goes once it commits)."""
    senders: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        senders.append(sender.pk)

    request_resolved.connect(receiver)
    yield senders
    request_resolved.disconnect(receiver)


@pytest.mark.parametrize("size", [2, 3])
def test_every_row_of_a_shared_batch_is_saved(size: int) -> None:
    """A POST shared by two (or more) requests records the answer on each of them: none stays
    leased `submitted`, to be POSTed again when its lease runs out."""
    batch = claimed(*[[f"m-{i}"] for i in range(size)])
    outcomes.record_outcome(batch, Accepted([f"m-{i}" for i in range(size)], 12), call())
    for row in batch:
        row = fresh(row)
        assert row.status == Status.PENDING and row.attempts == 1
        assert row.lease_token is None and row.lease_expires_at is None


def test_each_row_of_a_batch_keeps_its_own_answer() -> None:
    batch = claimed(["a-1", "a-2"], ["b-1"], ["c-1", "c-2"])
    outcomes.record_outcome(batch, Accepted(["a-1", "a-2", "c-2"], 12), call())
    a, b, c = (fresh(r) for r in batch)
    assert (a.status, a.accepted_meters, a.ignored_meters) == ("pending", ["a-1", "a-2"], [])
    assert (b.status, b.error, b.accepted_meters) == ("failed", "expired_or_revoked", [])
    assert (c.status, c.accepted_meters, c.ignored_meters) == ("pending", ["c-2"], ["c-1"])


def test_an_accepted_request_is_stored_without_error_or_next_attempt() -> None:
    (row,) = claimed(["m-1"])
    CollectionRequest.objects.filter(pk=row.pk).update(error="http_503", error_description="x")
    row.error, row.error_description = "http_503", "x"
    outcomes.record_outcome([row], Accepted(["m-1"], 12), call())
    row = fresh(row)
    assert (row.status, row.error, row.error_description) == ("pending", "", "")
    assert row.next_attempt_at is None and row.last_http_status == 200
    assert row.accepted_meters == ["m-1"]


def test_a_request_that_ran_out_of_retries_is_stored_without_a_next_attempt(
    settings: Any,
) -> None:
    settings.COLLECTIONS_MAX_ATTEMPTS = 1
    (row,) = claimed(["m-1"])
    outcomes.record_outcome([row], TransientError("http_503", "down", status_code=503), call())
    row = fresh(row)
    assert (row.status, row.error, row.next_attempt_at) == ("failed", "retries_exhausted", None)


def test_a_retried_request_is_stored_unannounced_with_its_next_attempt() -> None:
    (row,) = claimed(["m-1"])
    CollectionRequest.objects.filter(pk=row.pk).update(announced_at=timezone.now())
    before = timezone.now()
    outcomes.record_outcome([row], TransientError("http_503", "down", status_code=503), call())
    row = fresh(row)
    assert row.status == "submitted" and row.attempts == 1 and row.announced_at is None
    assert row.next_attempt_at > before and row.updated >= before
    assert (row.error, row.error_description, row.last_http_status) == ("http_503", "down", 503)


def test_a_finished_request_keeps_when_it_was_announced() -> None:
    (row,) = claimed(["m-1"])
    announced = timezone.now() - timedelta(seconds=5)
    CollectionRequest.objects.filter(pk=row.pk).update(announced_at=announced)
    row.announced_at = announced
    outcomes.record_outcome([row], PermanentError("not_found", "no", status_code=404), call())
    assert fresh(row).announced_at == announced


def test_a_long_vendor_error_type_is_recorded_not_lost() -> None:
    """The client cuts the vendor's error type to the column's 64 characters, so recording
    the outcome succeeds and the request is not POSTed again."""
    from collections_app.client import parse_answer
    from tests.test_client_answers import answer

    (row,) = claimed(["m-1"])
    try:
        parse_answer(answer(400, {"error": "x" * 200, "error_description": "bad"}))
    except PermanentError as err:
        outcomes.record_outcome([row], err, call())
    row = fresh(row)
    assert row.status == "failed" and row.error == "x" * 64
    assert Attempt.objects.get(request=row).error == "x" * 64


# --- the attempt rows ---------------------------------------------------------------------


def test_each_request_of_a_call_gets_an_attempt_row_with_the_calls_figures() -> None:
    """The per-attempt record: when the call started, its status code, duration, error and
    the Celery task that made it, on one row per request it carried."""
    batch = claimed(["a"], ["b"])
    the_call = call("task-42")
    outcomes.record_outcome(
        batch, TransientError("http_503", "maintenance", status_code=503), the_call
    )
    attempts = list(Attempt.objects.order_by("request__created"))
    assert [a.request_id for a in attempts] == [r.pk for r in batch]
    for attempt in attempts:
        assert attempt.call_id == the_call.call_id and attempt.requests_in_call == 2
        assert attempt.started == STARTED and attempt.duration_ms == 1234
        assert (attempt.status_code, attempt.error, attempt.error_description) == (
            503,
            "http_503",
            "maintenance",
        )
        assert attempt.task_id == "task-42" and attempt.retry_after_seconds is None


def test_a_successful_attempt_is_a_200_without_error() -> None:
    (row,) = claimed(["a"])
    outcomes.record_outcome([row], Accepted(["a"], 12), call())
    attempt = Attempt.objects.get(request=row)
    assert (attempt.status_code, attempt.error, attempt.error_description) == (200, "", "")
    assert attempt.retry_after_seconds is None and attempt.requests_in_call == 1


def test_a_throttled_attempt_notes_its_retry_after() -> None:
    (row,) = claimed(["a"])
    outcomes.record_outcome(
        [row], Throttled("http_429", "slow", status_code=429, retry_after=12.5), call()
    )
    attempt = Attempt.objects.get(request=row)
    assert (attempt.status_code, attempt.retry_after_seconds) == (429, 12.5)


def test_a_network_failure_attempt_has_no_status_code() -> None:
    (row,) = claimed(["a"])
    outcomes.record_outcome([row], TransientError("timeout", "no answer within 30s"), call())
    attempt = Attempt.objects.get(request=row)
    assert (attempt.status_code, attempt.error) == (None, "timeout")


def test_a_split_batch_logs_the_refusal_and_leaves_the_requests_to_their_halves() -> None:
    batch = claimed(["a"], ["b"])
    err = PermanentError("invalid_param", "meter b is bad", status_code=400)
    outcomes.record_split(batch, err, call())
    attempts = Attempt.objects.all()
    assert attempts.count() == 2
    assert {a.error_description for a in attempts} == {
        "meter b is bad (batch of 2 split to find the bad request)"
    }
    assert {(a.status_code, a.error) for a in attempts} == {(400, "invalid_param")}
    for row in batch:
        row = fresh(row)
        assert row.status == "submitted" and row.lease_token == batch[0].lease_token


# --- only the lease holder's write lands ------------------------------------------------


def test_a_worker_whose_lease_ran_out_cannot_overwrite_a_newer_outcome(
    resolved: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """The sweep gave the row to another worker, which recorded `pending`: the first worker's
    late failure must not replace it, nor tell anyone."""
    (row,) = claimed(["m-1"])
    CollectionRequest.objects.filter(pk=row.pk).update(
        status=Status.PENDING, lease_token=None, lease_expires_at=None, attempts=1
    )
    with django_capture_on_commit_callbacks(execute=True):
        outcomes.record_outcome([row], PermanentError("not_found", "no", status_code=404), call())
    stored = fresh(row)
    assert (stored.status, stored.error, stored.attempts) == ("pending", "", 1)
    assert resolved == []


def test_a_stale_outcome_leaves_the_new_lease_holders_row_alone() -> None:
    (row,) = claimed(["m-1"])
    token = taken_over(row)
    outcomes.record_outcome([row], TransientError("http_503", "down", status_code=503), call())
    stored = fresh(row)
    assert stored.lease_token == token and stored.attempts == 0 and stored.error == ""


@pytest.mark.parametrize("size", [2, 3])
def test_in_a_batch_only_the_rows_still_held_are_saved(
    size: int, resolved: Any, django_capture_on_commit_callbacks: Any
) -> None:
    batch = claimed(*[[f"m-{i}"] for i in range(size)])
    token = taken_over(batch[1])
    with django_capture_on_commit_callbacks(execute=True):
        outcomes.record_outcome(batch, Accepted([f"m-{i}" for i in range(size)], 12), call())
    lost = fresh(batch[1])
    assert lost.status == "submitted" and lost.lease_token == token and lost.attempts == 0
    kept = [r.pk for i, r in enumerate(batch) if i != 1]
    assert all(fresh(r).status == "pending" for r in batch if r.pk in kept)
    assert sorted(resolved, key=str) == sorted(kept, key=str)  # nobody hears of the lost row


def test_a_recorded_outcome_is_told_once_it_commits(
    resolved: Any, django_capture_on_commit_callbacks: Any
) -> None:
    (row,) = claimed(["m-1"])
    with django_capture_on_commit_callbacks(execute=True):
        outcomes.record_outcome([row], Accepted(["m-1"], 12), call())
    assert resolved == [row.pk]


# --- giving rows back untried ----------------------------------------------------------


def test_deferred_rows_wait_and_are_freed_without_an_attempt() -> None:
    batch = claimed(["a"], ["b"])
    before = timezone.now()
    outcomes.defer(batch, 30)
    for row in batch:
        row = fresh(row)
        assert row.status == "submitted" and row.attempts == 0
        assert row.lease_token is None and row.announced_at is None
        assert before + timedelta(seconds=30) <= row.next_attempt_at
        assert row.next_attempt_at <= timezone.now() + timedelta(seconds=30)
    assert not Attempt.objects.exists()


def test_a_deferral_never_brings_a_later_attempt_forward() -> None:
    """A row throttled until later keeps that time when a short pause defers it."""
    (row,) = claimed(["a"])
    later = timezone.now() + timedelta(seconds=300)
    row.next_attempt_at = later
    outcomes.defer([row], 5)
    assert fresh(row).next_attempt_at == later


def test_a_deferral_of_a_row_without_a_next_attempt_schedules_one() -> None:
    (row,) = claimed(["a"])
    row.next_attempt_at = None
    before = timezone.now()
    outcomes.defer([row], 5)
    assert fresh(row).next_attempt_at >= before + timedelta(seconds=5)
