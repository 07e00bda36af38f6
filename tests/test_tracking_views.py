"""Collection tracking where people see it: the dashboard's figures (exact numbers), the
Prometheus gauges, the admin's filter and per-meter inline, the JSON API and its schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from collections_app.models import (
    CollectionOutcome,
    CollectionRequest,
    Event,
    MeterProgress,
    Status,
    VendorCall,
)
from collections_app.ops import figures, metrics
from collections_app.services import tokens, tracking

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 25, 12, 7, 30, tzinfo=UTC)


def pending(*meters: str, accepted: datetime | None = None) -> CollectionRequest:
    request = CollectionRequest.objects.create(
        meters=list(meters), accepted_meters=list(meters), status=Status.PENDING
    )
    tracking.begin([request])
    if accepted:
        MeterProgress.objects.filter(request=request).update(accepted_at=accepted)
    return request


def finished(outcome: str, at: datetime) -> CollectionRequest:
    request = CollectionRequest.objects.create(
        meters=["x"],
        accepted_meters=["x"],
        status=Status.PENDING,
        collection_outcome=outcome,
        collection_finished_at=at,
    )
    return request


def call(code: int | None, minutes_ago: float, now: datetime = NOW) -> None:
    VendorCall.objects.create(
        method="GET",
        endpoint="/events",
        started=now - timedelta(minutes=minutes_ago),
        status_code=code,
        error="" if code == 200 else "x",
    )


def test_tracking_figures() -> None:
    pending("m-1", "m-2", accepted=NOW - timedelta(hours=3))
    pending("m-3", accepted=NOW - timedelta(hours=1))
    finished(CollectionOutcome.COLLECTED, NOW - timedelta(hours=2))
    finished(CollectionOutcome.COLLECTED, NOW - timedelta(hours=13))  # yesterday (UTC)
    finished(CollectionOutcome.PARTIALLY_COLLECTED, NOW - timedelta(minutes=5))
    finished(CollectionOutcome.COLLECTION_ERRORED, NOW - timedelta(minutes=1))
    CollectionRequest.objects.create(meters=["s"])  # submitted: not tracked yet
    Event.objects.create(uid="e", type="ping", raw={}, via="webhook", received_at=NOW)
    call(200, 5)
    call(429, 10)
    call(None, 20)
    call(200, 90)  # more than an hour ago
    t = figures.tracking(NOW)
    assert t["in_progress"] == 2 and t["finished_today"] == 3 and t["errored"] == 1
    assert (t["collected_today"], t["partially_collected_today"]) == (1, 1)
    assert t["collection_errored_today"] == 1
    assert t["meters_collecting"] == 3
    assert t["oldest_unfinished_at"] == NOW - timedelta(hours=3)
    assert t["oldest_unfinished_age_seconds"] == 3 * 3600
    assert t["events_unprocessed"] == 1
    assert t["calls"]["last_hour"] == 3 and t["calls"]["failed_last_hour"] == 2


def test_failed_tracking_calls_raise_an_alert(redis_db: Any) -> None:
    now = timezone.now()
    call(503, 1, now)
    snap = metrics.snapshot(now)
    assert snap["panels"]["tracking"] == metrics.WARN
    assert any("tracking call" in a["message"] for a in snap["alerts"])


def staff(django_user_model: Any) -> Client:
    client = Client()
    user = django_user_model.objects.create_superuser("op", password="x")
    client.force_login(user)
    return client


def test_prometheus_gauges(django_user_model: Any, redis_db: Any) -> None:
    pending("m-1", accepted=timezone.now() - timedelta(minutes=10))
    finished(CollectionOutcome.PARTIALLY_COLLECTED, timezone.now())
    text = staff(django_user_model).get("/metrics").content.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("collections_collections_in_progress", ())] == 1
    key = ("collections_collections_finished_today", (("outcome", "partially_collected"),))
    assert samples[key] == 1
    assert samples[("collections_meters_collecting", ())] == 1
    assert 590 < samples[("collections_oldest_unfinished_age_seconds", ())] < 700
    assert samples[("collections_tracking_calls_last_hour", ())] == 0


def test_dashboard_shows_the_tracking_panel(django_user_model: Any, redis_db: Any) -> None:
    client = staff(django_user_model)
    response = client.get("/ops/")
    assert response.status_code == 200
    assert b'id="panel-tracking"' in response.content and b'id="k-progress"' in response.content
    data = client.get("/ops/metrics.json").json()
    assert data["tracking"]["in_progress"] == 0


def test_admin_filter_and_inline(django_user_model: Any) -> None:
    request = pending("m-1", "m-2")
    tracking.receive(
        [
            tracking.parse_event(
                {
                    "uid": "e1",
                    "type": "meter_historical_collection_finished_successful",
                    "meter_uid": "m-1",
                    "ts": timezone.now().isoformat(),
                }
            )
        ],
        "webhook",
    )
    tracking.process_events()
    done = finished(CollectionOutcome.COLLECTION_ERRORED, timezone.now())
    client = staff(django_user_model)
    base = "/admin/collections_app/collectionrequest/"
    page = client.get(f"{base}?collection_outcome__exact=collection_errored").content.decode()
    assert str(done.pk) in page and str(request.pk) not in page
    detail = client.get(f"{base}{request.pk}/change/").content.decode()
    assert "Collection progress" in detail and "finished_successful" in detail
    for model in ("event", "vendorcall"):
        assert client.get(f"/admin/collections_app/{model}/").status_code == 200


def test_api_carries_the_outcome_and_progress(django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("reader")
    from django.contrib.auth.models import Permission

    user.user_permissions.set(Permission.objects.filter(codename="view_collectionrequest"))
    token = tokens.issue(user)[1]
    request = pending("m-1")
    tracking.apply_meters([{"uid": "m-1", "status": "updated"}], ["m-1"])
    auth = {"Authorization": f"Bearer {token}"}
    body = Client().get(f"/api/collections/{request.pk}/", headers=auth).json()
    assert body["collection_outcome"] == "collected" and body["collection_finished_at"]
    assert body["meters_progress"][0]["meter"] == "m-1"
    assert body["meters_progress"][0]["status"] == "updated"
    listed = Client().get("/api/collections/", headers=auth).json()
    assert listed["results"][0]["meters_progress"] == body["meters_progress"]


def test_schema_documents_the_new_fields() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schemas = SchemaGenerator().get_schema(public=True)["components"]["schemas"]
    request = schemas["CollectionRequest"]["properties"]
    assert request["collection_outcome"]["nullable"] is True
    assert {"collected", "partially_collected", "collection_errored"} <= set(
        schemas[request["collection_outcome"]["oneOf"][0]["$ref"].rsplit("/", 1)[-1]]["enum"]
    )
    assert request["meters_progress"]["readOnly"] is True
    item = schemas["MeterProgress"]
    assert set(item["properties"]) == {"meter", "stage", "status", "status_message", "updated"}
