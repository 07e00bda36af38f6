"""Authorizations: parsing the vendor's objects, the sync of GET /authorizations (`responses`
for the vendor's odd answers, the sandbox on loopback for its shape), the authorization_*
events between syncs, and end to end: a revocation at the vendor lowers the bulk trigger's
skip count and estimate, and a request naming the revoked meters lists exactly the meters the
vendor dropped."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
import responses
from django.utils import timezone
from responses import matchers

from collections_app import pricing, services
from collections_app.exceptions import BadResponse
from collections_app.models import COLLECTABLE, Authorization, CollectionRequest, Event, Meter
from collections_app.services import authorizations, bulk_trigger, registry, tracking
from collections_app.webhooks import SALT_HEADER, SIGNATURE_HEADER, signature

from .conftest import wait_until

BASE = "https://uapi.test/api/v2"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
SECRET = "auth-webhook-secret"
WEBHOOK = "/webhooks/utilityapi/"


def everything() -> bulk_trigger.TriggerPlan:
    return bulk_trigger.plan(Meter.objects.all())


def meters_of(authorization_uid: str) -> set[str]:
    return set(
        Meter.objects.filter(authorization_uid=authorization_uid).values_list("uid", flat=True)
    )


# --- parsing ----------------------------------------------------------------------------------


def test_the_vendors_object_is_read_whole() -> None:
    item = {
        "uid": "1234",
        "status": "updated",
        "declined": None,
        "is_declined": False,
        "expires": "2027-01-01T00:00:00.000000+00:00",
        "is_expired": False,
        "revoked": "2026-05-01T10:00:00Z",
        "is_revoked": True,
        "is_test": True,
        "notes": [{"type": "x", "msg": "y"}],
        "brand_new_attribute": {"nested": [1]},
    }
    row = authorizations.authorization_from_vendor(item, NOW)
    assert row is not None
    assert (row.uid, row.status, row.is_revoked, row.is_expired, row.is_test) == (
        "1234", "updated", True, False, True)  # fmt: skip
    assert row.revoked == datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert row.expires == datetime(2027, 1, 1, tzinfo=UTC)
    assert row.raw["brand_new_attribute"] == {"nested": [1]} and row.synced_at == NOW


@pytest.mark.parametrize("preset", ["1 year", "P1Y", "until_revoked", "", 12, None, {"d": 1}])
def test_a_preset_expires_is_kept_unparsed(preset: Any) -> None:
    row = authorizations.authorization_from_vendor({"uid": "9", "expires": preset}, NOW)
    assert row is not None and row.expires is None and not row.is_expired
    assert row.raw["expires"] == preset  # what the vendor said stays visible


def test_missing_and_odd_attributes_take_defaults() -> None:
    row = authorizations.authorization_from_vendor(
        {"uid": 77, "is_revoked": "true", "is_test": 1, "status": None, "revoked": "soon"}, NOW
    )
    assert row is not None and row.uid == "77"
    assert not (row.is_revoked or row.is_test or row.is_declined) and row.revoked is None
    assert row.status == ""


@pytest.mark.parametrize(
    "item", [{"uid": ""}, {"uid": "has space"}, {"uid": "x" * 65}, {"uid": True}, {}, "a", None]
)
def test_an_object_without_a_usable_uid_is_skipped(item: Any) -> None:
    assert authorizations.authorization_from_vendor(item, NOW) is None


# --- sync: the vendor's answers (responses) ---------------------------------------------------


@pytest.fixture
def vendor(settings: Any, redis_db: Any) -> Any:
    settings.UTILITYAPI_BASE_URL = BASE
    settings.UTILITYAPI_TOKEN = "t0ken"
    settings.COLLECTIONS_RETRY_BASE_SECONDS = 0.01
    with responses.RequestsMock() as mock:
        yield mock


def vendor_authorization(uid: str, **extra: Any) -> dict[str, Any]:
    future = "2099-01-01T00:00:00Z"
    return {"uid": uid, "status": "updated", "revoked": None, "is_revoked": False,
            "expires": future, "is_expired": False, "is_test": False, **extra}  # fmt: skip


@pytest.mark.django_db
def test_pages_are_followed_and_retried_and_the_meters_get_their_state(vendor: Any) -> None:
    second = f"{BASE}/authorizations?after=2"
    first_page = [
        vendor_authorization("1"),
        vendor_authorization("2", revoked="2026-01-01T00:00:00Z", is_revoked=True),
        {"uid": "bad uid"},
    ]
    later = [
        vendor_authorization("3", expires="2001-01-01T00:00:00Z"),  # past: expired all the same
        vendor_authorization("4", expires="2 years", is_expired=True),
        vendor_authorization("1", status="pending"),  # listed again while paging: the last wins
    ]
    vendor.get(
        f"{BASE}/authorizations",
        json={"authorizations": first_page, "next": second},
        match=[matchers.query_param_matcher({})],
    )
    vendor.get(second, status=503, body="maintenance")
    vendor.get(second, json={"authorizations": later, "next": None, "unknown": 1})
    meters = [{"uid": f"m{n}", "authorization_uid": str(n)} for n in range(1, 6)]
    vendor.get(f"{BASE}/meters", json={"meters": meters, "next": None})
    result = registry.sync_meters()
    assert result.authorizations == 5 and (result.revoked, result.expired) == (1, 2)
    assert (
        len(vendor.calls) == 4
        and vendor.calls[0].request.headers["Authorization"] == "Bearer t0ken"
    )
    rows = {a.uid: a for a in Authorization.objects.all()}
    assert set(rows) == {"1", "2", "3", "4"} and rows["1"].status == "pending"
    assert rows["4"].expires is None and rows["4"].raw["expires"] == "2 years"
    flags = {m.uid: (m.authorization_revoked, m.authorization_expired) for m in Meter.objects.all()}
    assert flags == {
        "m1": (False, False),
        "m2": (True, False),
        "m3": (False, True),
        "m4": (False, True),
        "m5": (False, False),  # an authorization not listed: neither
    }


@pytest.mark.django_db
def test_a_page_without_the_list_stops_the_sync_before_the_meters(vendor: Any) -> None:
    vendor.get(f"{BASE}/authorizations", json={"authorization": [], "next": None})
    with pytest.raises(BadResponse, match="without a `authorizations` list"):
        registry.sync_meters()
    assert len(vendor.calls) == 1 and not Meter.objects.exists()


@pytest.mark.django_db
def test_a_later_sync_clears_what_the_vendor_no_longer_says(vendor: Any) -> None:
    url = f"{BASE}/authorizations"
    vendor.get(url, json={"authorizations": [vendor_authorization("1", is_revoked=True)]})
    vendor.get(f"{BASE}/meters", json={"meters": [{"uid": "m1", "authorization_uid": "1"}]})
    registry.sync_meters()
    assert Meter.objects.get().authorization_revoked
    vendor.replace(responses.GET, url, json={"authorizations": [vendor_authorization("1")]})
    registry.sync_meters()
    assert not Meter.objects.get().authorization_revoked


# --- sync against the sandbox -----------------------------------------------------------------


def revoke_at_the_vendor(sandbox: Any, *uids: str) -> None:
    answer = requests.post(
        f"{sandbox.url}/_sandbox/revoke", json={"authorizations": list(uids)}, timeout=10
    )
    assert answer.status_code == 200


@pytest.mark.django_db
def test_a_revocation_read_by_the_next_sync_lowers_the_skip_count_and_the_estimate(
    sandbox: Any, redis_db: Any
) -> None:
    sandbox.state.meter_count = (
        400  # authorizations 5000–5039: 5019, 5039 revoked; 5018, 5038 expired
    )
    registry.sync_meters()
    assert Authorization.objects.count() == 40 + 3  # and those of the uids outside the registry
    before = everything()
    assert (before.selected, before.collectable, before.revoked, before.expired) == (
        400,
        360,
        20,
        20,
    )
    assert all("authorization" not in m.raw for m in Meter.objects.all())  # the vendor's shape

    revoke_at_the_vendor(sandbox, "5003")
    assert everything() == before  # nothing known here until a sync (or the event) says so
    result = registry.sync_meters()
    after = everything()
    assert (after.collectable, after.revoked, after.skipped) == (350, 30, 50)
    assert result.revoked == 30
    drop = (
        pricing.estimate(before.collectable, 12).high - pricing.estimate(after.collectable, 12).high
    )
    assert drop == 10 * pricing.price_per_meter(12) == Decimal("120.00")
    row = Authorization.objects.get(uid="5003")
    assert row.is_revoked and row.revoked is not None
    assert abs(row.revoked - timezone.now()) < timedelta(minutes=1)


@pytest.mark.django_db
def test_an_expiry_passed_since_the_sync_counts_as_expired(sandbox: Any, redis_db: Any) -> None:
    sandbox.state.meter_count = 30
    registry.sync_meters()
    assert everything().expired == 0
    # Time passes: authorization 5001's expiry (as synced) is now behind us.
    Authorization.objects.filter(uid="5001").update(expires=timezone.now() - timedelta(seconds=1))
    plan = everything()
    assert (plan.expired, plan.collectable) == (10, 20)
    assert not Meter.objects.filter(COLLECTABLE, authorization_uid="5001").exists()


# --- events between syncs ---------------------------------------------------------------------


def post_events(client: Any, *events: dict[str, Any]) -> None:
    raw = json.dumps({"events": list(events), "next": None}).encode()
    headers = {SALT_HEADER: "s", SIGNATURE_HEADER: signature(SECRET, "s", raw)}
    answer = client.post(WEBHOOK, data=raw, content_type="application/json", headers=headers)
    assert answer.status_code == 200


def event(uid: str, kind: str, authorization: str, ts: datetime | None = None) -> dict[str, Any]:
    when = (ts or timezone.now()).isoformat()
    return {"uid": uid, "type": f"authorization_{kind}", "ts": when,
            "authorization_uid": authorization, "is_delivered": False}  # fmt: skip


@pytest.fixture
def synced(sandbox: Any, redis_db: Any, settings: Any) -> Any:
    """Meters 100000–100049 of authorizations 5000–5004 synced, and the webhook on."""
    settings.UTILITYAPI_WEBHOOK_SECRET = SECRET
    sandbox.state.meter_count = 50
    registry.sync_meters()
    return sandbox


@pytest.mark.django_db
def test_a_revoked_event_updates_the_row_and_the_plan_without_a_sync(
    synced: Any, client: Any
) -> None:
    before = everything()
    revoke_at_the_vendor(synced, "5002")
    (vendor_event,) = requests.get(
        f"{synced.url}/events", headers={"Authorization": "Bearer sandbox-token"}, timeout=10
    ).json()["events"]
    post_events(client, vendor_event)
    assert everything() == before  # stored, not yet processed
    assert tracking.process_events() == 1
    row = Authorization.objects.get(uid="5002")
    assert row.is_revoked and row.revoked == datetime.fromisoformat(vendor_event["ts"])
    after = everything()
    assert (before.collectable - after.collectable, after.revoked - before.revoked) == (10, 10)
    assert set(Meter.objects.exclude(COLLECTABLE).values_list("uid", flat=True)) == meters_of(
        "5002"
    )
    assert Event.objects.get().processed_at is not None


@pytest.mark.django_db
def test_expired_and_renewed_events(synced: Any, client: Any) -> None:
    post_events(client, event("e1", "expired", "5001"), event("e2", "expired", "5003"))
    tracking.process_events()
    assert everything().expired == 20
    assert Authorization.objects.get(uid="5001").is_expired
    later = timezone.now() + timedelta(seconds=5)
    post_events(client, event("e3", "renewed", "5001", later))
    tracking.process_events()
    renewed = Authorization.objects.get(uid="5001")
    assert not renewed.is_expired and renewed.expires is None  # the next sync reads the new one
    assert set(Meter.objects.exclude(COLLECTABLE).values_list("uid", flat=True)) == meters_of(
        "5003"
    )


@pytest.mark.django_db
def test_events_in_any_order_and_older_than_the_sync(synced: Any, client: Any) -> None:
    now = timezone.now()
    post_events(
        client,
        event("late", "renewed", "5001", now + timedelta(seconds=9)),
        event("early", "expired", "5001", now + timedelta(seconds=1)),  # arrives second
        event("stale", "revoked", "5002", now - timedelta(hours=1)),  # the sync saw it since
        event("fresh", "revoked", "5003", now + timedelta(seconds=2)),
    )
    tracking.process_events()
    assert not Authorization.objects.get(uid="5001").is_expired  # the renewal came after
    assert not Authorization.objects.get(uid="5002").is_revoked
    assert Authorization.objects.get(uid="5003").is_revoked
    assert everything().collectable == 40


@pytest.mark.django_db
def test_an_event_for_an_unknown_authorization_creates_its_row(synced: Any, client: Any) -> None:
    post_events(
        client,
        event("u1", "revoked", "9999"),
        {"uid": "u2", "type": "authorization_revoked", "ts": None},  # no authorization: ignored
        event("u3", "revoked", "has space"),  # no usable uid: ignored
    )
    assert tracking.process_events() == 3
    row = Authorization.objects.get(uid="9999")
    assert row.is_revoked and row.synced_at is None and row.raw == {}
    assert Authorization.objects.count() == 5 + 3 + 1
    assert everything().collectable == 50  # none of the registry's meters is its


# --- the admin ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_shows_the_authorization(synced: Any, admin_client: Any) -> None:
    revoke_at_the_vendor(synced, "5001")
    registry.sync_meters()
    meter = Meter.objects.get(uid="100010")
    page = admin_client.get(f"/admin/collections_app/meter/{meter.pk}/change/").content.decode()
    row = Authorization.objects.get(uid="5001")
    assert f"/admin/collections_app/authorization/{row.pk}/change/" in page
    assert ">revoked</span>" in page
    listing = admin_client.get("/admin/collections_app/authorization/", {"is_revoked__exact": "1"})
    assert [a.uid for a in listing.context["cl"].result_list] == ["4001", "5001"]
    detail = admin_client.get(f"/admin/collections_app/authorization/{row.pk}/change/")
    assert detail.status_code == 200 and "its meters" in detail.content.decode()
    assert admin_client.get("/admin/collections_app/authorization/add/").status_code == 403


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_revoked_at_the_vendor_skipped_here_and_dropped_there(
    live_server: Any, sandbox: Any, settings: Any, start_worker: Callable[..., Any]
) -> None:
    """The vendor's webhook brings the revocation; the plan drops, and a request naming every
    meter lists as ignored exactly the meters the vendor dropped: the registry's skipped ones."""
    settings.UTILITYAPI_WEBHOOK_SECRET = SECRET
    state = sandbox.state
    state.meter_count = 40  # authorizations 5000–5003, none revoked or expired
    state.configure(webhook_url=live_server.url + WEBHOOK, webhook_secret=SECRET)
    start_worker(UTILITYAPI_WEBHOOK_SECRET=SECRET)
    registry.sync_meters()
    before = everything()
    assert (before.collectable, before.skipped) == (40, 0)

    revoke_at_the_vendor(sandbox, "5002")
    wait_until(lambda: Meter.objects.filter(authorization_revoked=True).count() == 10)
    after = everything()
    assert (after.collectable, after.revoked, after.skipped) == (30, 10, 10)
    assert pricing.estimate(after.collectable, 12).high == Decimal("360.00")  # was $480.00
    skipped = set(Meter.objects.exclude(COLLECTABLE).values_list("uid", flat=True))

    everyone = sorted(Meter.objects.values_list("uid", flat=True))
    request = services.request_collection(everyone, 12)
    wait_until(lambda: CollectionRequest.objects.filter(pk=request.pk, status="pending").exists())
    request.refresh_from_db()
    (call,) = [c for c in state.calls if c.get("status") == 200]
    dropped = {m for m in call["meters"] if state.classify(m) == "dropped"}
    assert set(request.ignored_meters) == dropped == skipped == meters_of("5002")
    assert sorted(request.accepted_meters) == sorted(set(everyone) - dropped)
