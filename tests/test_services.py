"""Services and transitions against PostgreSQL: validation, claims, outcomes, the sweep."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from collections_app import services
from collections_app.client import Accepted
from collections_app.exceptions import (
    AccountError,
    BadResponse,
    PermanentError,
    Throttled,
    TransientError,
)
from collections_app.models import Attempt, CollectionRequest, Status
from collections_app.services import broker, leases, outcomes, policy, transitions

from .conftest import use_broker

pytestmark = pytest.mark.django_db


def call() -> outcomes.Call:
    return outcomes.Call(uuid.uuid4(), timezone.now(), 42, "task-1")


def claimed(*meter_lists: list[str], duration: int | None = 12) -> list[CollectionRequest]:
    requests = [services.request_collection(m, duration) for m in meter_lists]
    return leases.claim(requests[0].pk, "task-1")


@pytest.mark.parametrize(
    ("meters", "duration", "field", "code"),
    [
        (None, None, "meters", "required_param_missing"),
        ([], None, "meters", "required_param_missing"),
        ("m-1", None, "meters", "invalid_param"),
        ({"m": 1}, None, "meters", "invalid_param"),
        ([1, 2], None, "meters", "invalid_param"),
        (["m-1", None], None, "meters", "invalid_param"),
        (["m-1", "  "], None, "meters", "invalid_param"),
        (["m 1"], None, "meters", "invalid_param"),
        (["x" * 65], None, "meters", "invalid_param"),
        (["m-1", "m-1"], None, "meters", "invalid_param"),
        (["m-1"], 0, "collection_duration", "invalid_param"),
        (["m-1"], 37, "collection_duration", "invalid_param"),
        (["m-1"], "12", "collection_duration", "invalid_param"),
        (["m-1"], 12.0, "collection_duration", "invalid_param"),
        (["m-1"], True, "collection_duration", "invalid_param"),
    ],
)
def test_bad_input_names_the_field_and_stores_nothing(
    django_capture_on_commit_callbacks: Any, meters: Any, duration: Any, field: str, code: str
) -> None:
    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(ValidationError) as caught,
    ):
        services.request_collection(meters, duration)
    assert list(caught.value.error_dict) == [field]
    error = caught.value.error_dict[field][0]
    assert error.code == code and field in error.message
    assert CollectionRequest.objects.count() == 0 and callbacks == []


def test_too_many_meters_is_refused(settings: Any) -> None:
    settings.COLLECTIONS_MAX_METERS_PER_REQUEST = 3
    with pytest.raises(ValidationError, match="at most 3"):
        services.request_collection(["a", "b", "c", "d"])
    assert not CollectionRequest.objects.exists()


def test_request_is_stored_due_and_announced_by_a_relay_once_committed(
    django_capture_on_commit_callbacks: Any, redis_db: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks, CaptureQueriesContext(connection) as q:
        request = services.request_collection(["m-1", "m-2"], 6, source="cli")
    assert callbacks == [] and redis_db.llen("celery") == 0  # no broker call in the caller
    statements = [query["sql"].split()[0] for query in q.captured_queries]
    statements = [s for s in statements if s not in ("SAVEPOINT", "RELEASE")]  # the test's own
    # One statement (its own transaction): the database keeps the registry's last request.
    assert statements == ["INSERT"]
    request.refresh_from_db()
    assert (request.status, request.meters, request.source) == ("submitted", ["m-1", "m-2"], "cli")
    assert request.next_attempt_at is not None and request.dispatched_at is not None
    assert request.announced_at is None
    assert broker.announce_due() == (1, None)
    assert redis_db.llen("celery") == 1
    assert broker.announce_due() == (0, None)  # announced once
    assert redis_db.llen("celery") == 1


def test_relays_announce_one_message_per_post_not_per_row(settings: Any, redis_db: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 10
    services.request_collections([[f"a{i}"] for i in range(25)], 12)  # 3 POSTs of 12 months
    services.request_collections([["b1", "b2"]], 24)  # and one of 24
    assert broker.announce_due()[0] == 4
    assert redis_db.llen("celery") == 4


def test_posts_needed_packs_like_the_claim(settings: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 10
    assert broker.posts_needed([]) == 0
    assert broker.posts_needed([(12, 10), (12, 1)]) == 2  # a full request goes alone
    assert broker.posts_needed([(12, 6), (12, 4), (12, 1)]) == 2
    assert broker.posts_needed([(12, 6), (None, 6), (12, 4)]) == 2  # durations apart
    settings.COLLECTIONS_BATCH_MAX_METERS = 1  # coalescing off: one POST a request
    assert broker.posts_needed([(12, 1)] * 5) == 5


def test_a_dead_broker_leaves_the_rows_unannounced_for_the_next_round(
    settings: Any, redis_db: Any
) -> None:
    request = services.request_collection(["m-1"])
    use_broker("redis://127.0.0.1:9/0")  # nothing listens there
    try:
        assert broker.announce_due()[0] == 0
    finally:
        use_broker(None)
    request.refresh_from_db()
    assert request.announced_at is None
    assert broker.announce_due()[0] == 1


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        services.request_collection(["m-1"], source="carrier-pigeon")
    assert "source" in caught.value.error_dict


def test_idempotency_key_returns_the_first_request(django_user_model: Any) -> None:
    user = django_user_model.objects.create(username="app")
    first = services.request_collection(["m-1"], requested_by=user, idempotency_key="k1")
    again = services.request_collection(["m-1"], requested_by=user, idempotency_key="k1")
    assert again.pk == first.pk and CollectionRequest.objects.count() == 1
    with pytest.raises(ValidationError) as caught:
        services.request_collection(["m-2"], requested_by=user, idempotency_key="k1")
    assert "idempotency_key" in caught.value.error_dict


def test_transitions_outside_the_table_are_refused() -> None:
    request = CollectionRequest(meters=["m"], status=Status.PENDING)
    with pytest.raises(transitions.TransitionError):
        transitions.transition(request, Status.SUBMITTED)
    with pytest.raises(transitions.TransitionError):
        transitions.transition(
            CollectionRequest(meters=["m"], status=Status.FAILED), Status.PENDING
        )


def test_claim_leases_the_request_once_and_takes_due_companions_of_the_same_duration() -> None:
    a = services.request_collection(["a"], 12)
    b = services.request_collection(["b"], 12)
    other_duration = services.request_collection(["c"], 6)
    later = services.request_collection(["d"], 12)
    CollectionRequest.objects.filter(pk=later.pk).update(
        next_attempt_at=timezone.now() + timedelta(minutes=5)
    )
    batch = leases.claim(a.pk, "t1")
    assert {r.pk for r in batch} == {a.pk, b.pk}
    assert all(r.lease_token == batch[0].lease_token and r.task_id == "t1" for r in batch)
    assert leases.claim(a.pk, "t2") == [] and leases.claim(b.pk, "t2") == []
    assert [r.pk for r in leases.claim(other_duration.pk, "t3")] == [other_duration.pk]
    assert leases.claim(later.pk, "t4") == []  # not due yet


def test_claim_respects_the_meter_budget(settings: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 3
    a = services.request_collection(["a1", "a2"], None)
    services.request_collection(["b1", "b2"], None)  # would overflow
    c = services.request_collection(["c1"], None)
    assert {r.pk for r in leases.claim(a.pk, "t")} == {a.pk, c.pk}


def test_expired_lease_can_be_claimed_again() -> None:
    (request,) = claimed(["m"])
    CollectionRequest.objects.filter(pk=request.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert [r.pk for r in leases.claim(request.pk, "t2")] == [request.pk]


def test_200_splits_accepted_and_ignored_per_request() -> None:
    batch = claimed(["m-1", "gone-1"], ["m-2"], ["gone-2"])
    outcomes.record_outcome(batch, Accepted(["m-1", "m-2"], 12), call())
    first, second, third = (CollectionRequest.objects.get(pk=r.pk) for r in batch)
    assert (first.status, first.accepted_meters, first.ignored_meters) == (
        "pending",
        ["m-1"],
        ["gone-1"],
    )
    assert (second.status, second.accepted_meters) == ("pending", ["m-2"])
    assert (third.status, third.error) == ("failed", "expired_or_revoked")
    assert all(r.lease_token is None and r.attempts == 1 for r in (first, second, third))
    attempts = Attempt.objects.filter(request__in=batch)
    assert attempts.count() == 3 and {a.requests_in_call for a in attempts} == {3}
    assert len({a.call_id for a in attempts}) == 1


def test_429_waits_for_retry_after_without_spending_an_attempt() -> None:
    (request,) = claimed(["m"])
    before = timezone.now()
    outcomes.record_outcome(
        [request], Throttled("http_429", "slow", status_code=429, retry_after=30), call()
    )
    request.refresh_from_db()
    assert request.status == "submitted" and request.attempts == 0
    assert request.next_attempt_at >= before + timedelta(seconds=30)
    assert request.error == "http_429" and request.last_http_status == 429
    assert request.announced_at is None  # a relay announces it when it falls due
    assert Attempt.objects.get(request=request).retry_after_seconds == 30
    assert broker.announce_due()[0] == 0  # not yet
    assert 29 < (broker.seconds_until_next_due(timezone.now()) or 0) <= 30  # the relay's sleep


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (PermanentError("invalid_param", "bad", status_code=400), 400),
        (PermanentError("not_found", "none", status_code=404), 404),
        (PermanentError("http_500", "HTTP 500", status_code=500), 500),
        (AccountError("payment_required", "no money", status_code=402), 402),
    ],
)
def test_permanent_errors_fail_at_once(error: PermanentError, status: int) -> None:
    (request,) = claimed(["m"])
    outcomes.record_outcome([request], error, call())
    request.refresh_from_db()
    assert (request.status, request.error, request.last_http_status) == (
        "failed",
        error.error,
        status,
    )
    assert request.error_description == error.description and request.next_attempt_at is None


@pytest.mark.parametrize(
    "error",
    [
        TransientError("http_503", "down", status_code=503),
        TransientError("timeout", "slow"),
        BadResponse("bad_response", "html", status_code=200),
    ],
)
def test_transient_errors_back_off_then_exhaust(settings: Any, error: TransientError) -> None:
    settings.COLLECTIONS_MAX_ATTEMPTS = 2
    settings.COLLECTIONS_RETRY_BASE_SECONDS = 10
    (request,) = claimed(["m"])
    outcomes.record_outcome([request], error, call())
    request.refresh_from_db()
    assert request.status == "submitted" and request.attempts == 1
    wait = (request.next_attempt_at - timezone.now()).total_seconds()
    assert 4 <= wait <= 10
    CollectionRequest.objects.filter(pk=request.pk).update(next_attempt_at=timezone.now())
    (request,) = leases.claim(request.pk, "t")
    outcomes.record_outcome([request], error, call())
    request.refresh_from_db()
    assert (request.status, request.error, request.attempts) == ("failed", "retries_exhausted", 2)
    assert error.error in request.error_description


def test_backoff_is_exponential_jittered_and_capped(settings: Any) -> None:
    settings.COLLECTIONS_RETRY_BASE_SECONDS = 5
    settings.COLLECTIONS_RETRY_MAX_SECONDS = 60
    for attempts, step in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (12, 60)]:
        delays = [policy.backoff(attempts) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_defer_keeps_attempts_and_frees_the_lease() -> None:
    (request,) = claimed(["m"])
    outcomes.defer([request], 5)
    request.refresh_from_db()
    assert request.attempts == 0 and request.lease_token is None
    assert request.next_attempt_at > timezone.now() + timedelta(seconds=4)
    assert not Attempt.objects.exists()


def test_retry_failed_resubmits_only_failed_requests() -> None:
    (failed,) = claimed(["m"])
    outcomes.record_outcome([failed], PermanentError("not_found", "x", status_code=404), call())
    pending = services.request_collection(["p"], 3)
    CollectionRequest.objects.filter(pk=pending.pk).update(status=Status.PENDING)
    count = services.retry_failed(CollectionRequest.objects.all())
    assert count == 1
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.error) == ("submitted", 0, "")
    assert failed.announced_at is None and failed.next_attempt_at <= timezone.now()
    assert failed.http_attempts.count() == 1  # the history stays
    assert CollectionRequest.objects.get(pk=pending.pk).status == "pending"


def test_sweep_frees_dead_workers_rows_and_redispatches_forgotten_ones(
    settings: Any, redis_db: Any
) -> None:
    settings.COLLECTIONS_STUCK_AFTER_SECONDS = 60
    now = timezone.now()
    orphan, forgotten, fresh, waiting = (services.request_collection([m]) for m in "abcd")
    rows = CollectionRequest.objects
    rows.filter(pk=orphan.pk).update(
        lease_token=uuid.uuid4(), lease_expires_at=now - timedelta(seconds=1)
    )
    rows.filter(pk=forgotten.pk).update(announced_at=now - timedelta(seconds=61))
    rows.filter(pk=fresh.pk).update(announced_at=now)
    rows.filter(pk=waiting.pk).update(
        next_attempt_at=now + timedelta(minutes=5), announced_at=now - timedelta(seconds=61)
    )
    result = services.sweep()
    assert result == {"orphaned": 1, "requeued": 2}
    assert redis_db.llen("celery") == 0  # the sweep only marks rows; a relay announces them
    assert rows.get(pk=orphan.pk).lease_token is None
    assert rows.get(pk=orphan.pk).announced_at is None
    assert rows.get(pk=forgotten.pk).announced_at is None
    assert rows.get(pk=fresh.pk).announced_at == now
    assert rows.get(pk=waiting.pk).announced_at is not None  # not due: left alone
