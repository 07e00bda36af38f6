"""End to end: a real Celery worker, real Redis, PostgreSQL and the sandbox on loopback."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest

from collections_app import services
from collections_app.models import Attempt, CollectionRequest, Status
from collections_app.services import broker

from .conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def settled(*requests: CollectionRequest, timeout: float = 20) -> list[CollectionRequest]:
    """Wait until every request has left `submitted`; return them fresh from the database."""
    ids = [r.pk for r in requests]

    def done() -> bool:
        return not CollectionRequest.objects.filter(pk__in=ids, status=Status.SUBMITTED).exists()

    wait_until(done, timeout=timeout)
    return [CollectionRequest.objects.get(pk=pk) for pk in ids]


def script(sandbox: Any, *responses: dict[str, Any]) -> None:
    sandbox.state.script.extend(responses)


def posts(sandbox: Any) -> list[dict[str, Any]]:
    return list(sandbox.state.calls)


def test_success_records_accepted_and_dropped_meters(worker: Any, sandbox: Any) -> None:
    request = services.request_collection(["m-1", "revoked-2", "m-3"], 12)
    (request,) = settled(request)
    assert request.status == Status.PENDING
    assert request.accepted_meters == ["m-1", "m-3"]
    assert request.ignored_meters == ["revoked-2"]
    assert request.attempts == 1 and request.last_http_status == 200 and request.error == ""
    attempt = request.http_attempts.get()
    assert attempt.status_code == 200 and attempt.duration_ms is not None and attempt.task_id
    assert [c["meters"] for c in posts(sandbox)] == [["m-1", "revoked-2", "m-3"]]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            {"status": 400, "body": {"error": "invalid_param", "error_description": "bad"}},
            "invalid_param",
        ),
        (
            {"status": 401, "body": {"error": "invalid_token", "error_description": "no"}},
            "invalid_token",
        ),
        (
            {"status": 402, "body": {"error": "payment_required", "error_description": "$"}},
            "payment_required",
        ),
        ({"status": 404, "body": {"error": "not_found", "error_description": "none"}}, "not_found"),
        (
            {"status": 400, "body": {"error": "brand_new_type", "error_description": "?"}},
            "brand_new_type",
        ),
        ({"status": 500, "body": "<html>oops</html>"}, "http_500"),
    ],
)
def test_refusals_fail_at_once(
    worker: Any, sandbox: Any, answer: dict[str, Any], error: str
) -> None:
    script(sandbox, answer)
    (request,) = settled(services.request_collection(["m-1"]))
    assert request.status == Status.FAILED
    assert request.error == error
    assert request.last_http_status == answer["status"]
    assert request.attempts == 1
    assert len(posts(sandbox)) == 1


def test_unknown_meters_fail_with_404_from_sandbox(worker: Any, sandbox: Any) -> None:
    (request,) = settled(services.request_collection(["missing-1", "missing-2"]))
    assert (request.status, request.error, request.last_http_status) == ("failed", "not_found", 404)


def test_503_then_504_then_success(worker: Any, sandbox: Any) -> None:
    script(sandbox, {"status": 503, "body": ""}, {"status": 504, "body": "<h1>timeout</h1>"})
    (request,) = settled(services.request_collection(["m-1"]))
    assert request.status == Status.PENDING
    codes = list(request.http_attempts.values_list("status_code", flat=True))
    assert codes == [503, 504, 200]
    assert request.attempts == 3


def test_retries_exhausted(worker: Any, sandbox: Any) -> None:
    script(sandbox, *[{"status": 503, "body": "maintenance"}] * 10)
    (request,) = settled(services.request_collection(["m-1"]), timeout=30)
    assert request.status == Status.FAILED
    assert request.error == "retries_exhausted"
    assert "503" in request.error_description
    assert request.attempts == 4 == len(posts(sandbox))  # COLLECTIONS_MAX_ATTEMPTS in the worker


def _retry_after_header(form: str, seconds: int) -> str:
    if form == "seconds":
        return str(seconds)
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_is_honoured_by_every_worker(start_worker: Any, sandbox: Any, form: str) -> None:
    start_worker()
    start_worker()
    script(sandbox, {"status": 429, "headers": {"Retry-After": _retry_after_header(form, 3)}})
    first = services.request_collection(["m-1"])
    wait_until(lambda: posts(sandbox))
    others = [services.request_collection([f"m-{i}"], 6) for i in range(2, 6)]
    requests = settled(first, *others, timeout=30)
    assert all(r.status == Status.PENDING for r in requests)
    calls = posts(sandbox)
    throttled_at = calls[0]["answered"]
    retry_after = 3 if form == "seconds" else 2  # an HTTP-date has whole-second precision
    assert calls[0]["status"] == 429
    assert all(c["at"] >= throttled_at + retry_after - 0.05 for c in calls[1:]), calls
    assert not any(c["early"] for c in calls)
    assert CollectionRequest.objects.get(pk=first.pk).attempts == 1  # the 429 is not counted


def test_duplicate_delivery_posts_once(worker: Any, sandbox: Any) -> None:
    sandbox.state.latency_ms = 300
    request = services.request_collection(["m-1"])
    broker.publish(3)
    (request,) = settled(request)
    time.sleep(0.5)  # give a straggling duplicate the chance to (wrongly) POST
    assert request.status == Status.PENDING
    assert len(posts(sandbox)) == 1
    assert Attempt.objects.count() == 1


def test_coalesced_batch_keeps_each_requests_outcome(start_worker: Any, sandbox: Any) -> None:
    from django.db import transaction

    with transaction.atomic():  # all due at the same moment
        good = services.request_collection(["m-1", "revoked-1"], 12)
        bad = services.request_collection(["bad!uid"], 12)
        other = services.request_collection(["m-2"], 12)
    start_worker(concurrency=1)  # one thread: the first message takes all three
    good, bad, other = settled(good, bad, other)
    assert (good.status, good.accepted_meters, good.ignored_meters) == (
        "pending",
        ["m-1"],
        ["revoked-1"],
    )
    assert (bad.status, bad.error) == ("failed", "invalid_param")
    assert other.status == "pending"
    first = posts(sandbox)[0]
    assert sorted(first["meters"]) == ["bad!uid", "m-1", "m-2", "revoked-1"]
