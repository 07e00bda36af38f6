"""Collection tracking rules: events folded into per-meter progress (duplicates, disorder,
unknown values), meter reads, and the request's final outcome set once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from collections_app import selectors
from collections_app.api.serializers import as_json
from collections_app.models import (
    CollectionOutcome,
    CollectionRequest,
    Event,
    EventSource,
    MeterProgress,
    Status,
)
from collections_app.services import tracking
from collections_app.signals import collection_finished

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished() -> Iterator[list[Any]]:
    """The requests `collection_finished` was sent for, in order."""
    seen: list[Any] = []

    def receiver(sender: CollectionRequest, **kwargs: Any) -> None:
        seen.append((sender.pk, sender.collection_outcome))

    collection_finished.connect(receiver)
    yield seen
    collection_finished.disconnect(receiver)


def accepted(*meters: str) -> CollectionRequest:
    """A request UtilityAPI accepted just now, with its progress rows (as record_outcome
    leaves it)."""
    request = CollectionRequest.objects.create(
        meters=list(meters), accepted_meters=list(meters), status=Status.PENDING, attempts=1
    )
    tracking.begin([request])
    return request


def at(seconds: float) -> str:
    return (timezone.now() + timedelta(seconds=seconds)).isoformat()


def event(uid: str, stage: str, meter: str, seconds: float = 0) -> dict[str, Any]:
    return {
        "uid": uid,
        "type": f"meter_historical_collection_{stage}",
        "ts": at(seconds),
        "meter_uid": meter,
    }


def deliver(*items: dict[str, Any]) -> int:
    """Store the events as a webhook would, then process them (committing callbacks)."""
    tracking.receive([tracking.parse_event(i) for i in items], EventSource.WEBHOOK)
    return tracking.process_events()


def progress(request: CollectionRequest) -> dict[str, MeterProgress]:
    return {p.meter: p for p in MeterProgress.objects.filter(request=request)}


def test_begin_makes_one_row_per_accepted_meter() -> None:
    request = accepted("m-1", "m-2")
    tracking.begin([request])  # twice: no second set of rows
    rows = progress(request)
    assert set(rows) == {"m-1", "m-2"}
    assert all(r.stage == "" and r.result == "" for r in rows.values())
    assert request.collection_outcome is None


def test_events_to_collected(
    finished: list[Any], django_capture_on_commit_callbacks: Any, redis_db: Any
) -> None:
    request = accepted("m-1", "m-2")
    deliver(event("e1", "started", "m-1", 1), event("e2", "started", "m-2", 1))
    request.refresh_from_db()
    assert request.collection_outcome is None
    with django_capture_on_commit_callbacks(execute=True):
        deliver(
            event("e3", "progress", "m-1", 2),
            event("e4", "finished_successful", "m-1", 3),
            event("e5", "finished_successful", "m-2", 3),
        )
    request.refresh_from_db()
    assert request.collection_outcome == CollectionOutcome.COLLECTED
    assert request.collection_finished_at is not None
    assert request.status == Status.PENDING  # the outcome is beside the status
    assert finished == [(request.pk, "collected")]
    assert {m: p.stage for m, p in progress(request).items()} == {
        "m-1": "finished_successful",
        "m-2": "finished_successful",
    }
    assert Event.objects.filter(processed_at=None).count() == 0


def test_mixed_request_ends_partially_collected() -> None:
    request = accepted("m-1", "m-2", "m-3")
    deliver(
        event("e1", "finished_successful", "m-1", 1),
        event("e2", "finished_errored", "m-2", 1),
        event("e3", "finished_successful", "m-3", 1),
    )
    request.refresh_from_db()
    assert request.collection_outcome == CollectionOutcome.PARTIALLY_COLLECTED


def test_all_errored_is_collection_errored() -> None:
    request = accepted("m-1", "m-2")
    deliver(event("e1", "finished_errored", "m-1", 1), event("e2", "finished_errored", "m-2", 1))
    request.refresh_from_db()
    assert request.collection_outcome == CollectionOutcome.COLLECTION_ERRORED


def test_outcome_waits_for_every_meter() -> None:
    request = accepted("m-1", "m-2")
    deliver(event("e1", "finished_successful", "m-1", 1), event("e2", "retrying", "m-2", 1))
    request.refresh_from_db()
    assert request.collection_outcome is None


@pytest.mark.parametrize("later_seconds", [-5, 0, 5])
def test_a_late_started_never_overwrites_finished(later_seconds: float) -> None:
    """Whether the late `started` is stamped before, with or after the finish."""
    request = accepted("m-1", "m-2")
    deliver(event("e1", "finished_successful", "m-1", 10))
    deliver(event("e2", "started", "m-1", 10 + later_seconds))
    row = progress(request)["m-1"]
    assert row.stage == "finished_successful" and row.result == "successful"


def test_out_of_order_events_keep_the_newest_stage() -> None:
    request = accepted("m-1", "m-2")
    deliver(event("e2", "progress", "m-1", 20))
    deliver(event("e1", "started", "m-1", 10))  # older, arrives later
    row = progress(request)["m-1"]
    assert row.stage == "progress"
    # Events in one batch are applied in the order of their own times, not of arrival:
    deliver(event("e4", "finished_errored", "m-2", 40), event("e3", "delayed", "m-2", 30))
    assert progress(request)["m-2"].stage == "finished_errored"


def test_duplicate_events_are_applied_once() -> None:
    request = accepted("m-1")
    deliver(event("e1", "started", "m-1", 1))
    first = progress(request)["m-1"]
    item = event("e1", "finished_successful", "m-1", 5)  # same uid, other content: a replay
    assert deliver(item) == 0
    assert Event.objects.count() == 1
    again = progress(request)["m-1"]
    assert (again.stage, again.changed) == ("started", first.changed)


def test_unknown_types_and_stages_are_kept() -> None:
    request = accepted("m-1")
    deliver(
        {"uid": "e1", "type": "meter_bills_added", "meter_uid": "m-1", "ts": at(1)},
        {"uid": "e2", "type": "something_new", "ts": at(1)},
        event("e3", "paused_for_maintenance", "m-1", 2),
    )
    assert Event.objects.count() == 3 and not Event.objects.filter(processed_at=None).exists()
    row = progress(request)["m-1"]
    assert row.stage == "paused_for_maintenance" and row.result == ""
    request.refresh_from_db()
    assert request.collection_outcome is None


def test_outcome_is_set_once(
    finished: list[Any], django_capture_on_commit_callbacks: Any, redis_db: Any
) -> None:
    request = accepted("m-1", "m-2")
    with django_capture_on_commit_callbacks(execute=True):
        deliver(event("e1", "finished_successful", "m-1", 1))
        deliver(event("e2", "finished_errored", "m-2", 1))
        first = CollectionRequest.objects.get(pk=request.pk)
        assert tracking.settle([request.pk]) == []
        deliver(event("e3", "finished_successful", "m-2", 9))  # a vendor retry, later
    request.refresh_from_db()
    assert request.collection_outcome == CollectionOutcome.PARTIALLY_COLLECTED
    assert request.collection_finished_at == first.collection_finished_at
    assert finished == [(request.pk, "partially_collected")]
    assert progress(request)["m-2"].stage == "finished_errored"  # the record is final too


def test_events_before_acceptance_are_replayed(django_capture_on_commit_callbacks: Any) -> None:
    """A webhook can beat the POST's answer: the event waits for the row, then applies once
    the acceptance commits."""
    deliver(event("e1", "started", "m-1", -1), event("e2", "finished_successful", "m-1", 0))
    with django_capture_on_commit_callbacks(execute=True):
        request = accepted("m-1")
        assert progress(request)["m-1"].stage == ""  # not before the commit
    request.refresh_from_db()
    assert request.collection_outcome == CollectionOutcome.COLLECTED
    assert progress(request)["m-1"].stage == "finished_successful"


def test_events_of_an_earlier_collection_do_not_apply() -> None:
    old = tracking.parse_event(event("e0", "finished_successful", "m-1", -3600))
    tracking.receive([old], EventSource.POLL)
    request = accepted("m-1")
    tracking.process_events()
    since = progress(request)["m-1"].accepted_at
    assert tracking.replay(["m-1"], since=since) == 1  # looked at, and left alone: too old
    assert progress(request)["m-1"].stage == ""


def test_an_event_reaches_every_open_request_of_its_meter() -> None:
    first, second = accepted("m-1"), accepted("m-1", "m-2")
    deliver(event("e1", "finished_successful", "m-1", 1))
    first.refresh_from_db()
    assert first.collection_outcome == CollectionOutcome.COLLECTED
    assert progress(second)["m-1"].stage == "finished_successful"


# --- GET /meters reads ------------------------------------------------------------------------


def meter(uid: str, status: str, ts: datetime | None = None, **extra: Any) -> dict[str, Any]:
    stamp = (ts or timezone.now()).isoformat()
    return {"uid": uid, "status": status, "status_ts": stamp, "status_message": "", **extra}


def test_meter_status_finishes_meters() -> None:
    request = accepted("m-1", "m-2", "m-3")
    items = [
        meter("m-1", "updated", bill_count=12, interval_count=8760),
        meter("m-2", "pending"),
        {"uid": "m-9", "status": "updated"},  # not asked: ignored
    ]
    assert tracking.apply_meters(items, ["m-1", "m-2", "m-3"]) == 2
    rows = progress(request)
    assert (rows["m-1"].result, rows["m-1"].bill_count, rows["m-1"].interval_count) == (
        "successful",
        12,
        8760,
    )
    assert rows["m-1"].status_changed is not None and rows["m-1"].polled_at is not None
    assert rows["m-2"].result == "" and rows["m-2"].status == "pending"
    assert rows["m-3"].polled_at is not None and rows["m-3"].status == ""
    tracking.apply_meters(
        [meter("m-2", "errored", status_message="login failed"), meter("m-3", "updated")],
        ["m-2", "m-3"],
    )
    request.refresh_from_db()
    assert request.collection_outcome == CollectionOutcome.PARTIALLY_COLLECTED
    assert progress(request)["m-2"].status_message == "login failed"


def test_a_status_older_than_the_acceptance_does_not_finish() -> None:
    request = accepted("m-1")
    tracking.apply_meters([meter("m-1", "updated", timezone.now() - timedelta(days=2))], ["m-1"])
    assert progress(request)["m-1"].result == ""
    tracking.apply_meters([meter("m-1", "mystery")], ["m-1"])  # unknown: kept, not finished
    row = progress(request)["m-1"]
    assert (row.status, row.result) == ("mystery", "")


def test_meters_to_poll_are_the_old_unfinished_ones() -> None:
    request = accepted("m-1", "m-2")
    MeterProgress.objects.filter(request=request).update(
        accepted_at=timezone.now() - timedelta(hours=2)
    )
    deliver(event("e1", "finished_successful", "m-1", 1))
    assert tracking.meters_to_poll(timezone.now(), timedelta(hours=1)) == ["m-2"]
    assert tracking.meters_to_poll(timezone.now(), timedelta(hours=3)) == []


# --- what users see ---------------------------------------------------------------------------


def test_the_json_shape() -> None:
    request = accepted("m-1", "m-2")
    deliver(event("e1", "progress", "m-1", 1))
    tracking.apply_meters([meter("m-1", "pending", status_message="working")], ["m-1"])
    data = as_json(selectors.with_progress(CollectionRequest.objects).get(pk=request.pk))
    assert data["collection_outcome"] is None and data["collection_finished_at"] is None
    one, two = data["meters_progress"]
    assert one["meter"] == "m-1" and one["stage"] == "progress" and one["status"] == "pending"
    assert one["status_message"] == "working" and one["updated"]
    assert two == {
        "meter": "m-2",
        "stage": None,
        "status": None,
        "status_message": None,
        "updated": two["updated"],
    }
    submitted = CollectionRequest.objects.create(meters=["m-3"])
    assert as_json(submitted)["meters_progress"] == []
