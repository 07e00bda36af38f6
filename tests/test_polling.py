"""The polling safety net against UtilityAPI's odd answers (`responses`), with the real
fleet gate in Redis and the real database: paging, acknowledgement, meter batches, pauses,
and the call log."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import responses
from django.utils import timezone
from responses import matchers

from collections_app import polling
from collections_app.gate import pauses
from collections_app.models import (
    CollectionOutcome,
    CollectionRequest,
    Event,
    EventSource,
    MeterProgress,
    Status,
    VendorCall,
)
from collections_app.services import tracking

pytestmark = pytest.mark.django_db
BASE = "https://uapi.test/api/v2"
UNDELIVERED = [matchers.query_param_matcher({"is_delivered": "false"})]


@pytest.fixture
def vendor(settings: Any, redis_db: Any) -> Any:
    settings.UTILITYAPI_BASE_URL = BASE
    settings.UTILITYAPI_TOKEN = "t0ken"
    settings.COLLECTIONS_METER_POLL_AFTER_SECONDS = 3600
    with responses.RequestsMock() as mock:
        yield mock


def accepted(*meters: str, hours_ago: float = 0) -> CollectionRequest:
    request = CollectionRequest.objects.create(
        meters=list(meters), accepted_meters=list(meters), status=Status.PENDING
    )
    tracking.begin([request])
    when = timezone.now() - timedelta(hours=hours_ago)
    MeterProgress.objects.filter(request=request).update(accepted_at=when)
    return request


def event(uid: str, stage: str, meter: str) -> dict[str, Any]:
    return {
        "uid": uid,
        "type": f"meter_historical_collection_{stage}",
        "ts": timezone.now().isoformat(),
        "meter_uid": meter,
        "is_delivered": False,
    }


def test_missed_events_are_read_processed_and_acknowledged(vendor: Any) -> None:
    request = accepted("m-1", "m-2")
    second = f"{BASE}/events?is_delivered=false&after=e2"
    page1 = {"events": [event("e1", "finished_successful", "m-1"), {"bad": 1}], "next": second}
    vendor.get(f"{BASE}/events", json=page1, match=UNDELIVERED)
    vendor.get(second, json={"events": [event("e2", "finished_successful", "m-2")], "next": None})
    for uid in ("e1", "e2"):
        vendor.patch(
            f"{BASE}/events/{uid}",
            json={"uid": uid, "is_delivered": True},
            match=[matchers.json_params_matcher({"is_delivered": True})],
        )
    counts = polling.poll()
    assert counts["events_read"] == 2 and counts["events_malformed"] == 1
    assert counts["processed"] == 2 and counts["acknowledged"] == 2
    request.refresh_from_db()
    assert request.collection_outcome == CollectionOutcome.COLLECTED
    assert set(Event.objects.values_list("via", flat=True)) == {EventSource.POLL}
    assert not Event.objects.filter(acknowledged_at=None).exists()
    calls = list(VendorCall.objects.order_by("started", "id").values_list("method", "endpoint"))
    assert calls == [
        ("GET", "/events"),
        ("GET", "/events"),
        ("PATCH", "/events/{uid}"),
        ("PATCH", "/events/{uid}"),
    ]
    assert vendor.calls[0].request.headers["Authorization"] == "Bearer t0ken"


def test_events_already_stored_by_the_webhook_are_acknowledged_not_reapplied(
    vendor: Any,
) -> None:
    request = accepted("m-1")
    item = event("e1", "started", "m-1")
    tracking.receive([tracking.parse_event(item)], EventSource.WEBHOOK)
    tracking.process_events()
    changed = MeterProgress.objects.get(request=request).changed
    vendor.get(f"{BASE}/events", json={"events": [item], "next": None}, match=UNDELIVERED)
    vendor.patch(f"{BASE}/events/e1", json={})
    counts = polling.poll()
    assert counts["acknowledged"] == 1 and counts["processed"] == 0
    assert MeterProgress.objects.get(request=request).changed == changed
    assert Event.objects.get().via == EventSource.WEBHOOK


def test_next_link_to_another_host_is_not_followed(vendor: Any) -> None:
    page = {"events": [event("e1", "started", "m-1")], "next": "https://evil.test/api/v2/events"}
    vendor.get(f"{BASE}/events", json=page, match=UNDELIVERED)
    counts = polling.poll()
    assert counts["errors"] == 1
    assert len(vendor.calls) == 1  # nothing sent to the other host, nothing acknowledged
    assert VendorCall.objects.get().status_code == 200


def test_unfinished_meters_are_read_a_thousand_at_a_time(vendor: Any) -> None:
    uids = [f"m-{i}" for i in range(2500)]
    for chunk in (uids[:1000], uids[1000:2000], uids[2000:]):
        request = CollectionRequest.objects.create(
            meters=chunk, accepted_meters=chunk, status=Status.PENDING
        )
        tracking.begin([request])
    MeterProgress.objects.update(accepted_at=timezone.now() - timedelta(hours=2))
    accepted("fresh-1")  # accepted just now: not polled yet
    vendor.get(f"{BASE}/events", json={"events": [], "next": None}, match=UNDELIVERED)
    answers = [
        {"meters": [{"uid": u, "status": "updated", "bill_count": 3} for u in uids[:1000]]},
        {"meters": [{"uid": u, "status": "pending"} for u in uids[1000:2000]]},
        {"meters": [{"uid": u, "status": "errored"} for u in uids[2000:]]},
    ]
    for answer in answers:
        vendor.get(f"{BASE}/meters", json={**answer, "next": None})
    counts = polling.poll()
    asked = [c.request.params["uids"].split(",") for c in vendor.calls[1:]]
    assert [len(a) for a in asked] == [1000, 1000, 500]
    assert sorted(u for batch in asked for u in batch) == sorted(uids)
    assert counts["meters_polled"] == 2500 and counts["meters_changed"] == 2500
    outcomes = dict(
        CollectionRequest.objects.exclude(collection_outcome=None).values_list(
            "accepted_meters__0", "collection_outcome"
        )
    )
    assert outcomes == {"m-0": "collected", "m-2000": "collection_errored"}
    meter_calls = VendorCall.objects.filter(endpoint="/meters")
    assert sorted(meter_calls.values_list("items", flat=True)) == [500, 1000, 1000]


def test_a_429_pauses_the_fleet_and_ends_the_round(vendor: Any) -> None:
    accepted("m-1", hours_ago=2)
    vendor.get(f"{BASE}/events", status=429, headers={"Retry-After": "120"}, body="")
    counts = polling.poll()
    assert counts["errors"] == 1 and counts["paused"] == 1
    assert pauses.in_force()[0].kind == "throttle"
    assert pauses.in_force()[0].until - time.time() > 100
    assert len(vendor.calls) == 1  # GET /meters waits for the pause
    call = VendorCall.objects.get()
    assert (call.status_code, call.endpoint) == (429, "/events")


def test_a_401_pauses_the_account(vendor: Any, settings: Any) -> None:
    settings.COLLECTIONS_ACCOUNT_PAUSE_SECONDS = 60
    vendor.get(
        f"{BASE}/events", status=401, json={"error": "invalid_token", "error_description": "no"}
    )
    polling.poll()
    assert [p.kind for p in pauses.in_force()] == ["account"]
    assert VendorCall.objects.get().error == "invalid_token"


def test_no_call_while_the_fleet_is_paused(vendor: Any) -> None:
    pauses.pause("throttle", 30, "test")
    assert polling.poll()["paused"] == 1
    assert len(vendor.calls) == 0 and not VendorCall.objects.exists()


def test_unprocessed_events_are_processed_by_the_poll(vendor: Any) -> None:
    """A webhook whose processing message was lost: the poll finds the stored event."""
    request = accepted("m-1")
    tracking.receive([tracking.parse_event(event("e1", "finished_errored", "m-1"))], "webhook")
    vendor.get(f"{BASE}/events", json={"events": [], "next": None}, match=UNDELIVERED)
    assert polling.poll()["processed"] == 1
    request.refresh_from_db()
    assert request.collection_outcome == CollectionOutcome.COLLECTION_ERRORED
