"""The send pipeline (collections_app/delivery.py) against PostgreSQL, Redis and the sandbox
on loopback: due requests POSTed once, coalesced; a batch refused as a whole split to spare
the good requests; a pause or a missing gate defers the rows without a call."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import structlog
from django.db import IntegrityError, InterfaceError, OperationalError
from django.utils import timezone

from collections_app import delivery, gate
from collections_app.gate import pauses
from collections_app.models import Attempt, CollectionRequest
from collections_app.services import leases
from project import logs

pytestmark = pytest.mark.django_db


@pytest.fixture
def vendor(sandbox: Any, settings: Any, redis_db: Any) -> Any:
    """The sandbox as UtilityAPI: its token, no rate limit of its own, the fleet's gate."""
    settings.UTILITYAPI_SANDBOX_TOKEN = sandbox.state.token
    settings.UTILITYAPI_RATE_LIMIT = 50
    settings.COLLECTIONS_BATCH_MAX_METERS = 1000
    settings.COLLECTIONS_ACCOUNT_PAUSE_SECONDS = 300
    return sandbox.state


def meter(i: int) -> str:
    return str(100000 + i)  # a meter of the sandbox's registry


def stored(meters: list[str], duration: int | None = 12, age: float = 10) -> Any:
    return CollectionRequest.objects.create(
        meters=meters,
        collection_duration=duration,
        next_attempt_at=timezone.now() - timedelta(seconds=age),
    )


def fresh(row: Any) -> Any:
    return CollectionRequest.objects.get(pk=row.pk)


def test_due_requests_are_posted_once_together_and_recorded(vendor: Any) -> None:
    a = stored([meter(1), meter(2)], age=20)
    b = stored([meter(2), meter(3)], age=10)
    assert delivery.deliver_due("task-1") == "2 request(s): 200"
    (call,) = vendor.calls
    assert call["meters"] == [meter(1), meter(2), meter(3)]  # each meter once
    for row in (a, b):
        row = fresh(row)
        assert row.status == "pending" and row.lease_token is None
        attempt = Attempt.objects.get(request=row)
        assert attempt.status_code == 200 and attempt.task_id == "task-1"
        assert attempt.requests_in_call == 2 and attempt.duration_ms is not None
    assert delivery.deliver_due("task-2") == "" and len(vendor.calls) == 1


def test_the_duration_of_the_batch_is_sent(vendor: Any) -> None:
    stored([meter(1)], duration=24)
    delivery.deliver_due("t")
    assert fresh(CollectionRequest.objects.get()).status == "pending"
    assert [call["collection_duration"] for call in vendor.calls] == [24]


def test_the_post_goes_through_the_gate_under_its_endpoint(vendor: Any, redis_db: Any) -> None:
    """The fleet's call log (the dashboard's call rate, the per-second cap) names the POST."""
    stored([meter(1)])
    delivery.deliver_due("t")
    (member,) = redis_db.zrange(gate.limiter.CALLS_KEY, 0, -1)
    assert member.decode().startswith("POST /meters/historical-collection ")


@pytest.mark.parametrize("rows", [1, 2])
def test_every_log_line_of_a_send_names_its_requests(vendor: Any, rows: int) -> None:
    """`grep <request id>` finds a send's lines: the ids are bound for its whole path."""
    requests = [stored([meter(i)]) for i in range(rows)]
    batch = leases.claim(None, "t")
    logs.clear()
    delivery.send(batch, "t")
    bound = structlog.contextvars.get_contextvars()
    ids = [str(r.pk) for r in batch]
    assert sorted(ids) == sorted(str(r.pk) for r in requests)
    assert bound["request_ids"] == ",".join(ids)
    assert bound["request_id"] == (ids[0] if rows == 1 else "")
    assert bound["call_id"] == str(Attempt.objects.first().call_id)
    logs.clear()


def test_the_named_request_goes_first(vendor: Any) -> None:
    stored([meter(1)], duration=6, age=60)
    named = stored([meter(2)], duration=12, age=1)
    result = delivery.deliver_due("t", first=named.pk)
    assert result == "1 request(s): 200; 1 request(s): 200"
    assert [c["meters"] for c in vendor.calls] == [[meter(2)], [meter(1)]]


def test_a_batch_refused_as_a_whole_is_split_to_spare_the_good_requests(vendor: Any) -> None:
    good = stored([meter(1)], age=20)
    bad = stored(["not-a-meter"], age=10)
    vendor.script.append(
        {"status": 400, "body": {"error": "invalid_param", "error_description": "bad uid"}}
    )
    vendor.script.append(
        {"status": 400, "body": {"error": "invalid_param", "error_description": "bad uid"}}
    )
    vendor.script.append({"status": 200, "body": {"success": True, "meters": [meter(1)]}})
    vendor.script.rotate(-1)  # the 2nd 400 answers the bad half, the 200 the good one
    result = delivery.deliver_due("t")
    assert result == "1 request(s): 200; 1 request(s): 400 invalid_param"
    assert [c["meters"] for c in vendor.calls] == [
        [meter(1), "not-a-meter"],
        [meter(1)],
        ["not-a-meter"],
    ]
    assert fresh(good).status == "pending"
    assert (fresh(bad).status, fresh(bad).error) == ("failed", "invalid_param")
    split = Attempt.objects.filter(request=good).order_by("started").first()
    assert split is not None and "(batch of 2 split to find the bad request)" in (
        split.error_description
    )


def test_expired_or_revoked_holds_for_the_whole_batch_without_a_split(vendor: Any) -> None:
    rows = [stored([meter(1)], age=20), stored([meter(2)], age=10)]
    vendor.script.append(
        {"status": 400, "body": {"error": "expired_or_revoked", "error_description": "gone"}}
    )
    assert delivery.deliver_due("t") == "2 request(s): 400 expired_or_revoked"
    assert len(vendor.calls) == 1
    assert {fresh(r).status for r in rows} == {"failed"}


def test_a_lone_request_refused_is_not_split(vendor: Any) -> None:
    row = stored(["not-a-meter"])
    vendor.script.append({"status": 400, "body": {"error": "invalid_param"}})
    assert delivery.deliver_due("t") == "1 request(s): 400 invalid_param"
    assert len(vendor.calls) == 1 and fresh(row).status == "failed"


def test_a_503_other_than_400_is_retried_whole(vendor: Any) -> None:
    rows = [stored([meter(1)], age=20), stored([meter(2)], age=10)]
    vendor.script.append({"status": 503, "body": "maintenance"})
    assert delivery.deliver_due("t") == "2 request(s): 503 http_503"
    assert len(vendor.calls) == 1
    for row in rows:
        row = fresh(row)
        assert (row.status, row.attempts, row.error) == ("submitted", 1, "http_503")


def test_a_404_for_a_batch_is_not_split(vendor: Any) -> None:
    stored([meter(1)], age=20)
    stored([meter(2)], age=10)
    vendor.script.append({"status": 404, "body": {"error": "not_found"}})
    assert delivery.deliver_due("t") == "2 request(s): 404 not_found"
    assert len(vendor.calls) == 1


def test_during_a_pause_rows_are_deferred_without_a_call(vendor: Any) -> None:
    row = stored([meter(1)])
    pauses.pause("account", 120, "402 payment_required")
    result = delivery.deliver_due("t")
    assert result.startswith("deferred: held ") and result.endswith("s (paused)")
    assert vendor.calls == []
    row = fresh(row)
    assert row.status == "submitted" and row.attempts == 0 and row.lease_token is None
    assert row.next_attempt_at > timezone.now() + timedelta(seconds=100)


def test_a_401_pauses_the_fleet_and_the_rest_waits(vendor: Any) -> None:
    first = stored([meter(1)], duration=6, age=20)
    second = stored([meter(2)], duration=12, age=10)
    vendor.script.append({"status": 401, "body": {"error": "invalid_token"}})
    result = delivery.deliver_due("t")
    assert result.startswith("1 request(s): 401 invalid_token; deferred: held ")
    assert len(vendor.calls) == 1
    assert fresh(first).status == "failed"
    assert fresh(second).next_attempt_at > timezone.now() + timedelta(seconds=250)


def test_without_redis_nothing_is_sent_and_the_task_stops(vendor: Any, settings: Any) -> None:
    row = stored([meter(1)])
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    assert delivery.deliver_due("t") == "stopped, held 5.00s (gate unavailable)"
    assert vendor.calls == []
    row = fresh(row)
    assert row.lease_token is None and row.next_attempt_at > timezone.now() + timedelta(seconds=4)


def test_a_task_out_of_time_hands_the_rest_to_a_fresh_one(vendor: Any, redis_db: Any) -> None:
    stored([meter(1)], duration=6, age=20)
    left = stored([meter(2)], duration=12, age=10)
    assert delivery.deliver_due("t", budget=0) == "1 request(s): 200"
    assert len(vendor.calls) == 1 and fresh(left).status == "submitted"
    assert redis_db.llen("celery") == 1  # one message: a fresh task goes on


def test_the_lease_is_renewed_before_the_post(vendor: Any, settings: Any) -> None:
    settings.COLLECTIONS_LEASE_MARGIN_SECONDS = 30
    row = stored([meter(1)])
    (claimed,) = leases.claim(row.pk, "t")
    soon = timezone.now() + timedelta(seconds=1)
    claimed.lease_expires_at = soon
    CollectionRequest.objects.filter(pk=row.pk).update(lease_expires_at=soon)
    before = timezone.now()
    delivery.send([claimed], "t")
    assert Attempt.objects.get(request=row).started >= before
    assert claimed.lease_expires_at is None  # recorded, freed
    assert fresh(row).status == "pending"


class Blinking:
    """A recording step against a database that fails `failures` times, then answers."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> str:
        self.calls.append(args)
        if self.failures:
            raise self.failures.pop(0)
        return "recorded"


def test_an_answer_is_recorded_after_the_database_blinks(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The POST cannot be taken back: a lost connection while recording its answer is waited
    out (doubling waits) instead of losing the answer to a second paid send."""
    settings.COLLECTIONS_LEASE_MARGIN_SECONDS = 10
    record = Blinking(OperationalError("server closed"), InterfaceError("connection gone"))
    with caplog.at_level("WARNING", logger="collections_app.delivery"):
        assert delivery._record(record, "batch", "answer") == "recorded"
    assert record.calls == [("batch", "answer")] * 3
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable (server closed): recording again in 0.2s",
        "database unavailable (connection gone): recording again in 0.4s",
    ]


def test_recording_gives_up_within_the_lease_margin(settings: Any) -> None:
    """Past most of the lease's margin the error is raised: the sweep may take the row once
    the lease ends, so a worker must not go on recording after that."""
    settings.COLLECTIONS_LEASE_MARGIN_SECONDS = 1  # 0.8 s to record in
    record = Blinking(*[OperationalError("down")] * 50)
    with pytest.raises(OperationalError):
        delivery._record(record)
    assert 2 <= len(record.calls) <= 3  # 0.2 s, then 0.4 s, then past the 0.8 s


def test_other_database_errors_are_not_waited_out() -> None:
    record = Blinking(IntegrityError("a constraint"))
    with pytest.raises(IntegrityError):
        delivery._record(record)
    assert len(record.calls) == 1
