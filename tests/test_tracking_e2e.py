"""Collection tracking end to end: a real Celery worker, Redis, PostgreSQL, the web server
(pytest-django's live_server) and the sandbox playing the vendor's whole loop: it runs each
accepted meter's collection and posts signed webhooks to the running server."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.utils import timezone

from collections_app import services, tasks
from collections_app.models import (
    CollectionOutcome,
    CollectionRequest,
    Event,
    EventSource,
    MeterProgress,
    Status,
    VendorCall,
)
from collections_app.webhooks import SALT_HEADER, SIGNATURE_HEADER, signature

from .conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SECRET = "e2e-webhook-secret"
WEBHOOK = "/webhooks/utilityapi/"


@pytest.fixture
def loop(
    live_server: Any, sandbox: Any, settings: Any, start_worker: Callable[..., Any]
) -> Callable[..., Any]:
    """Configure the sandbox's vendor loop (knobs as keyword arguments) to post its webhooks
    to the live server, and start a worker; returns the sandbox's state."""
    settings.UTILITYAPI_WEBHOOK_SECRET = SECRET

    def configure(**knobs: Any) -> Any:
        defaults = {
            "webhook_url": live_server.url + WEBHOOK,
            "webhook_secret": SECRET,
            "collection_delay": 0.5,
            "webhook_retry_seconds": 1.0,  # a post that timed out on a busy machine is resent
        }
        sandbox.state.configure(**{**defaults, **knobs})
        start_worker(COLLECTIONS_METER_POLL_AFTER_SECONDS=1, UTILITYAPI_WEBHOOK_SECRET=SECRET)
        return sandbox.state

    return configure


def outcome(request: CollectionRequest, timeout: float = 60) -> CollectionRequest:
    """Wait for the request's collection_outcome; return it fresh from the database."""

    def done() -> bool:
        return CollectionRequest.objects.filter(
            pk=request.pk, collection_outcome__isnull=False
        ).exists()

    wait_until(done, timeout=timeout, interval=0.1)
    return CollectionRequest.objects.get(pk=request.pk)


def stages(request: CollectionRequest) -> dict[str, str]:
    return dict(MeterProgress.objects.filter(request=request).values_list("meter", "stage"))


def webhook_posts(state: Any) -> list[dict[str, Any]]:
    with state.lock:
        return [dict(post) for post in state.webhook_log]


def sandbox_events(state: Any) -> list[dict[str, Any]]:
    with state.lock:
        return [dict(event) for event in state.events.values()]


def quiet(state: Any) -> None:
    """Wait until every event the sandbox emitted was delivered (a post of it answered 200),
    stored once and processed."""

    def settled() -> bool:
        events = sandbox_events(state)
        return (
            all(e["is_delivered"] for e in events)
            and len(events) == Event.objects.count()
            and not Event.objects.filter(processed_at=None).exists()
        )

    wait_until(settled, timeout=60)


def snapshot() -> tuple[list[Any], ...]:
    """Everything a webhook post could change."""
    return (
        list(Event.objects.order_by("pk").values()),
        list(MeterProgress.objects.order_by("pk").values()),
        list(CollectionRequest.objects.order_by("pk").values()),
    )


def test_whole_loop_to_collected(loop: Callable[..., Any], live_server: Any) -> None:
    state = loop()
    request = services.request_collection(["m-1", "m-2"], 12)
    done = outcome(request)
    quiet(state)
    assert done.status == Status.PENDING
    assert done.collection_outcome == CollectionOutcome.COLLECTED
    assert done.collection_finished_at is not None
    assert stages(done) == {"m-1": "finished_successful", "m-2": "finished_successful"}
    stored = {e.uid: e for e in Event.objects.all()}
    assert set(stored) == {e["uid"] for e in sandbox_events(state)}  # every event, once
    assert {e.via for e in stored.values()} == {EventSource.WEBHOOK}
    assert {e.type for e in stored.values()} >= {
        "meter_historical_collection_started",
        "meter_historical_collection_finished_successful",
    }
    assert not VendorCall.objects.exists()  # the webhook alone did it: no polling needed


def test_forged_replayed_and_malformed_posts_change_nothing(
    loop: Callable[..., Any], live_server: Any
) -> None:
    state = loop(collection_delay=0.2)
    request = services.request_collection(["m-1"])
    outcome(request)
    quiet(state)
    url, before = live_server.url + WEBHOOK, snapshot()
    stored = Event.objects.get(type="meter_historical_collection_finished_successful")
    replay = json.dumps({"events": [stored.raw], "next": None}).encode()
    forged = json.dumps(
        {"events": [{**stored.raw, "uid": "forged-1", "meter_uid": "m-1"}], "next": None}
    ).encode()

    def send(raw: bytes, signed_with: str = SECRET) -> int:
        salt = "pepper"
        headers = {SALT_HEADER: salt, SIGNATURE_HEADER: signature(signed_with, salt, raw)}
        return requests.post(url, data=raw, headers=headers, timeout=10).status_code

    assert send(forged, signed_with="not-the-secret") == 403
    assert requests.post(url, data=forged, timeout=10).status_code == 403  # unsigned
    assert send(b'{"events": [{"uid": "x"}]') == 400  # signed, but not JSON
    assert send(b'{"events": [{"uid": "no-type"}]}') == 400
    assert send(replay) == 200  # a replay is accepted (the vendor would retry it otherwise)...
    assert snapshot() == before  # ...and, like the refused posts, changes nothing
    assert len(sandbox_events(state)) == Event.objects.count()


def test_duplicate_and_out_of_order_posts(loop: Callable[..., Any]) -> None:
    """Each event posted alone, each round newest first, every post sent twice."""
    state = loop(collection_delay=0.0, webhook_batch=1, webhook_reorder=True, webhook_duplicate=1.0)
    request = services.request_collection(["m-1", "m-2", "m-3"])
    outcome(request)
    quiet(state)
    assert len(sandbox_events(state)) == 9  # started, progress, finished for each meter
    done = CollectionRequest.objects.get(pk=request.pk)
    assert done.collection_outcome == CollectionOutcome.COLLECTED
    assert set(stages(done).values()) == {"finished_successful"}  # the late `started`s lost
    posts = webhook_posts(state)
    assert any(post["statuses"] == [200, 200] for post in posts)  # sent twice, both taken
    kinds = {e["uid"]: e["type"].rsplit("_collection_", 1)[-1] for e in sandbox_events(state)}
    order = [kinds[post["events"][0]] for post in posts]
    assert order.index("finished_successful") < order.index("started"), order
    assert Event.objects.count() == len(kinds)  # duplicates stored once


def test_missed_webhooks_are_recovered_by_polling_events(loop: Callable[..., Any]) -> None:
    state = loop(webhook_drop=1.0)  # no post ever arrives
    request = services.request_collection(["m-1", "m-2"])
    wait_until(
        lambda: len([e for e in sandbox_events(state) if "finished" in e["type"]]) == 2,
        timeout=30,
    )
    assert not Event.objects.exists()
    tasks.poll_progress.delay()
    done = outcome(request)
    assert done.collection_outcome == CollectionOutcome.COLLECTED
    assert set(Event.objects.values_list("via", flat=True)) == {EventSource.POLL}
    wait_until(lambda: all(e["is_delivered"] for e in sandbox_events(state)))  # PATCHed
    calls = set(VendorCall.objects.values_list("method", "endpoint", "status_code"))
    assert calls == {("GET", "/events", 200), ("PATCH", "/events/{uid}", 200)}


def test_meters_polled_when_no_event_comes(loop: Callable[..., Any], sandbox: Any) -> None:
    """No webhook and no event either: GET /meters?uids= finds the collection's end."""
    state = loop(webhook_url="", collection_delay=0.2)
    request = services.request_collection(["m-1", "errored-1"])
    wait_until(lambda: not state.collections and state.finished, timeout=60)

    def old_enough() -> bool:  # accepted more than COLLECTIONS_METER_POLL_AFTER_SECONDS ago
        since = timezone.now() - timedelta(seconds=1.5)
        rows = MeterProgress.objects.filter(request=request)
        return rows.exists() and not rows.filter(accepted_at__gt=since).exists()

    wait_until(old_enough, timeout=30)
    sandbox.state.script.append(
        {"route": "GET /events", "status": 200, "body": {"events": [], "next": None}}
    )
    counts = tasks.poll_progress.delay().get(timeout=30)
    assert counts["meters_polled"] == 2 and counts["events_read"] == 0
    done = outcome(request)
    assert done.collection_outcome == CollectionOutcome.PARTIALLY_COLLECTED
    rows = {p.meter: p for p in MeterProgress.objects.filter(request=request)}
    assert (rows["m-1"].status, rows["m-1"].bill_count) == ("updated", 12)
    assert rows["errored-1"].status == "errored" and rows["errored-1"].status_message
    assert VendorCall.objects.filter(endpoint="/meters", status_code=200).exists()


def test_mixed_request_ends_partially_collected(loop: Callable[..., Any]) -> None:
    loop()
    request = services.request_collection(["m-1", "errored-1", "m-2"])
    done = outcome(request)
    assert done.collection_outcome == CollectionOutcome.PARTIALLY_COLLECTED
    assert stages(done) == {
        "m-1": "finished_successful",
        "errored-1": "finished_errored",
        "m-2": "finished_successful",
    }
    errored = services.request_collection(["errored-2"])
    assert outcome(errored).collection_outcome == CollectionOutcome.COLLECTION_ERRORED


def test_indented_signatures_are_accepted(loop: Callable[..., Any]) -> None:
    state = loop(webhook_sign="indent4")
    request = services.request_collection(["m-1"])
    assert outcome(request).collection_outcome == CollectionOutcome.COLLECTED
    wait_until(lambda: all(e["is_delivered"] for e in sandbox_events(state)))  # 200s
