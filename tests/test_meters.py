"""The meter registry: sync from GET /meters (the sandbox on loopback, and `responses` for the
vendor's odd answers), the price table, and the admin's bulk trigger through its
confirmation page."""

from __future__ import annotations

import html
import importlib
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
import responses
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from responses import matchers

from collections_app import pricing, tasks
from collections_app.exceptions import AccountError, BadResponse, Throttled
from collections_app.gate import pauses
from collections_app.models import COLLECTABLE, CollectionRequest, Meter
from collections_app.services import broker, bulk_trigger, registry

from .conftest import ROOT

LIST = reverse("admin:collections_app_meter_changelist")
CONFIRMATION = "collections_app/meter_trigger_confirmation.html"


# --- sync against the sandbox ---------------------------------------------------------------


def sandbox_flags(i: int) -> tuple[bool, bool]:
    """(revoked, expired) of the sandbox's meter i: every 20th authorization of 10 meters is
    revoked, the one before it expired (sandbox/state.py)."""
    auth = i // 10
    return auth % 20 == 19, auth % 20 == 18


@pytest.mark.django_db
def test_sync_reads_every_page_and_records_flags(sandbox: Any) -> None:
    sandbox.state.meter_count = 2500
    result = registry.sync_meters()
    expected_revoked = sum(sandbox_flags(i)[0] for i in range(2500))
    expected_expired = sum(sandbox_flags(i)[1] for i in range(2500))
    assert (result.pages, result.seen, result.created, result.updated) == (3, 2500, 2500, 0)
    assert (result.revoked, result.expired) == (expected_revoked, expected_expired) == (120, 120)
    assert Meter.objects.count() == 2500
    assert Meter.objects.filter(authorization_revoked=True).count() == 120
    assert Meter.objects.filter(authorization_expired=True).count() == 120
    revoked, expired, fine = (Meter.objects.get(uid=u) for u in ("100190", "100180", "102499"))
    assert (revoked.authorization_revoked, revoked.authorization_expired) == (True, False)
    assert (expired.authorization_revoked, expired.authorization_expired) == (False, True)
    assert not (fine.authorization_revoked or fine.authorization_expired or fine.is_archived)
    assert (fine.authorization_uid, fine.utility, fine.vendor_status) == ("5249", "Duke", "updated")
    assert fine.is_activated and fine.raw["base"]["service_identifier"] == "SID-2499"


@pytest.mark.django_db
def test_resync_is_idempotent_and_keeps_last_request(sandbox: Any) -> None:
    sandbox.state.meter_count = 1200
    registry.sync_meters()
    request = CollectionRequest.objects.create(meters=["100001"])
    Meter.objects.filter(uid="100001").update(last_request=request)
    before = Meter.objects.get(uid="100001").synced_at
    again = registry.sync_meters()
    assert (again.pages, again.seen, again.created, again.updated) == (2, 1200, 0, 1200)
    assert Meter.objects.count() == 1200
    meter = Meter.objects.get(uid="100001")
    assert meter.last_request == request and meter.synced_at > before


@pytest.mark.django_db
def test_revocation_shows_after_the_next_sync(sandbox: Any) -> None:
    sandbox.state.meter_count = 1500
    registry.sync_meters()
    assert not Meter.objects.filter(authorization_uid="5003", authorization_revoked=True).exists()
    sandbox.state.revoked_authorizations["5003"] = time.time()  # meters 100030–100039
    sandbox.state.triggered["100040"] = 0.0  # the vendor now reports a running collection
    registry.sync_meters()
    revoked = set(Meter.objects.filter(authorization_revoked=True).values_list("uid", flat=True))
    assert {str(100030 + n) for n in range(10)} <= revoked
    initially = sum(sandbox_flags(i)[0] for i in range(1500))
    assert "100040" not in revoked and len(revoked) == initially + 10
    assert Meter.objects.get(uid="100040").vendor_status == "pending"


@pytest.mark.django_db
def test_sync_command_prints_counts(sandbox: Any) -> None:
    sandbox.state.meter_count = 1001
    out = StringIO()
    call_command("sync_meters", stdout=out)
    assert "Synced 1001 meter(s) in 2 page(s): 1001 new, 0 updated" in out.getvalue()


@pytest.mark.django_db
def test_sync_command_prints_a_line_per_page_off_a_terminal(sandbox: Any) -> None:
    sandbox.state.meter_count = 2500
    out = StringIO()
    call_command("sync_meters", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "Syncing meters: page 1, 1,000 meter(s) read",
        "Syncing meters: page 2, 2,000 meter(s) read",
        "Syncing meters: page 3, 2,500 meter(s) read",
    ]
    assert lines[3].startswith("Synced 2500 meter(s) in 3 page(s)")


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.django_db
def test_sync_command_rewrites_one_progress_line_on_a_terminal(sandbox: Any) -> None:
    sandbox.state.meter_count = 2500
    out = Terminal()
    call_command("sync_meters", stdout=out)
    progress, result = out.getvalue().split("\n")[:2]
    assert progress.split("\r\x1b[K")[1:] == [
        "Syncing meters: page 1, 1,000 meter(s) read",
        "Syncing meters: page 2, 2,000 meter(s) read",
        "Syncing meters: page 3, 2,500 meter(s) read",
    ]
    assert "Synced 2500 meter(s) in 3 page(s)" in result


@pytest.mark.django_db
def test_an_empty_registry_is_synced_once_at_start(redis_db: Any) -> None:
    from collections_app import sync_jobs

    first = sync_jobs.queue_sync_if_empty()
    assert first is not None and sync_jobs.running() == first
    assert sync_jobs.queue_sync() == first  # a second click follows the sync in flight
    assert redis_db.llen("celery") == 1
    sync_jobs.finished(first)
    make_meters(1)
    assert sync_jobs.queue_sync_if_empty() is None and sync_jobs.running() is None


@pytest.mark.django_db
def test_every_entry_point_updates_the_last_request(redis_db: Any) -> None:
    from collections_app import services

    make_meters(3)
    old = services.request_collection(["m-00000", "m-00001"], source="api")
    new = services.request_collection(["m-00001"], source="cli")
    (bulk,) = services.request_collections([["m-00002"]])
    last = dict(Meter.objects.values_list("uid", "last_request"))
    assert last == {"m-00000": old.pk, "m-00001": new.pk, "m-00002": bulk.pk}


@pytest.mark.django_db
def test_sync_command_fails_clearly(sandbox: Any) -> None:
    sandbox.state.token = "another-token"
    with pytest.raises(CommandError, match="Meter sync failed: HTTP 401, invalid_token"):
        call_command("sync_meters")
    assert not Meter.objects.exists()


def test_sync_command_exits_non_zero(sandbox: Any) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "UTILITYAPI_BASE_URL": sandbox.url,
        "UTILITYAPI_TOKEN": "wrong-token",
        "UTILITYAPI_SANDBOX_TOKEN": "wrong-token",  # a token for the sandbox's plain http
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "sync_meters"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Meter sync failed: HTTP 401, invalid_token" in done.stderr


@pytest.mark.django_db
def test_task_runs_the_sync(sandbox: Any, redis_db: Any) -> None:
    sandbox.state.meter_count = 25
    counts = tasks.sync_meters.apply().get()
    assert counts["seen"] == 25 and counts["pages"] == 1
    assert Meter.objects.count() == 25


def test_beat_schedule_interval_comes_from_the_environment(monkeypatch: Any) -> None:
    import project.settings as project_settings

    monkeypatch.setenv("METERS_SYNC_INTERVAL_SECONDS", "120")
    try:
        entry = importlib.reload(project_settings).CELERY_BEAT_SCHEDULE["sync-meters"]
    finally:
        monkeypatch.delenv("METERS_SYNC_INTERVAL_SECONDS")
        importlib.reload(project_settings)
    assert entry["task"] == "collections_app.tasks.sync_meters"
    assert entry["schedule"] == 120.0 and entry["options"]["expires"] == 120.0
    assert project_settings.CELERY_BEAT_SCHEDULE["sync-meters"]["schedule"] == 3600.0


# --- sync: the vendor's odd answers (responses) ---------------------------------------------

BASE = "https://uapi.test/api/v2"
FIRST = [matchers.query_param_matcher({})]  # the first page only, not `?page=2`


@pytest.fixture
def vendor(settings: Any, redis_db: Any) -> Any:
    """A mocked UtilityAPI at BASE, fast retries, and a clean fleet gate."""
    settings.UTILITYAPI_BASE_URL = BASE
    settings.UTILITYAPI_TOKEN = "t0ken"
    settings.COLLECTIONS_RETRY_BASE_SECONDS = 0.01
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/authorizations", json={"authorizations": [], "next": None})
        yield mock


def vendor_meter(uid: Any, auth_uid: str = "77", **extra: Any) -> dict[str, Any]:
    """A meter as the real UtilityAPI shows it: authorization_uid, no authorization object."""
    return {"uid": uid, "authorization_uid": auth_uid, "utility": "PG&E", "status": "updated",
            **extra}  # fmt: skip


@pytest.mark.django_db
def test_real_vendor_shape_unknown_and_missing_attributes(vendor: Any) -> None:
    page = [
        vendor_meter("1", is_activated=False),
        {"uid": 2},  # a number, and nothing else: defaults
        vendor_meter("3", "rev"),
        vendor_meter("4", "exp"),
        vendor_meter("5", "old"),
        # An inline authorization object is not the vendor's: ignored.
        vendor_meter(
            "6", status="errored", is_archived=True, utility=None, authorization={"revoked": True}
        ),
        {"uid": ""},
        {"uid": "has space"},
        {"no_uid": True},
        "not an object",
        # The same uid again on the page (the list moved while paging): the last wins.
        vendor_meter("1", status="pending", is_activated=True, brand_new={"x": 1}, notes=[]),
    ]
    vendor.get(f"{BASE}/meters", json={"meters": page, "next": None, "extra": "ignored"})
    listed = [
        {"uid": "rev", "revoked": "2024-05-01T10:00:00Z", "expires": None},
        {"uid": "exp", "is_expired": True},
        {"uid": "old", "expires": "2001-01-01T00:00:00"},
    ]
    vendor.replace(responses.GET, f"{BASE}/authorizations", json={"authorizations": listed})
    result = registry.sync_meters()
    assert (result.seen, result.created, result.invalid) == (6, 6, 4)
    rows = {m.uid: m for m in Meter.objects.all()}
    assert rows["1"].vendor_status == "pending" and rows["1"].raw["brand_new"] == {"x": 1}
    assert rows["1"].is_activated
    assert not rows["1"].authorization_revoked and not rows["1"].authorization_expired
    assert (rows["2"].authorization_uid, rows["2"].utility, rows["2"].vendor_status) == ("", "", "")
    assert not rows["2"].is_activated
    assert rows["3"].authorization_revoked and not rows["3"].authorization_expired
    assert rows["4"].authorization_expired and rows["5"].authorization_expired
    assert (
        rows["6"].is_archived and rows["6"].utility == "" and rows["6"].vendor_status == "errored"
    )
    assert not rows["6"].authorization_revoked and rows["6"].raw["authorization"]
    assert vendor.calls[0].request.headers["Authorization"] == "Bearer t0ken"


@pytest.mark.django_db
def test_transient_errors_are_retried_per_page(vendor: Any) -> None:
    second = f"{BASE}/meters?page=2"
    vendor.get(f"{BASE}/meters", json={"meters": [vendor_meter("1")], "next": second}, match=FIRST)
    vendor.get(second, status=503, body="<html>maintenance</html>")
    vendor.get(second, status=429, headers={"Retry-After": "0"}, body="")
    vendor.get(second, json={"meters": [vendor_meter("2")], "next": None})
    result = registry.sync_meters()
    assert (result.pages, result.seen) == (2, 2)
    assert len(vendor.calls) == 5  # GET /authorizations first


@pytest.mark.django_db
def test_a_long_retry_after_stops_the_sync_and_pauses_the_fleet(vendor: Any) -> None:
    vendor.get(f"{BASE}/meters", status=429, headers={"Retry-After": "600"})
    with pytest.raises(Throttled):
        registry.sync_meters()
    assert pauses.in_force()[0].until - time.time() > 500  # the delivery workers wait too
    with pytest.raises(registry.SyncPaused):
        registry.sync_meters()  # no call goes out while paused
    assert len(vendor.calls) == 2  # GET /authorizations, then the 429


@pytest.mark.django_db
def test_refusal_keeps_the_pages_already_read(vendor: Any) -> None:
    second = f"{BASE}/meters?page=2"
    vendor.get(f"{BASE}/meters", json={"meters": [vendor_meter("1")], "next": second}, match=FIRST)
    vendor.get(second, status=401, json={"error": "invalid_token", "error_description": "no"})
    with pytest.raises(AccountError):
        registry.sync_meters()
    assert list(Meter.objects.values_list("uid", flat=True)) == ["1"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"meters": [], "next": "https://evil.test/api/v2/meters?page=2"}, "another host"),
        ({"meters": [], "next": f"{BASE}/meters"}, "does not end"),
        ({"meters": [], "next": 42}, "unusable next"),
        ({"next": None}, "without a `meters` list"),
        ({"meters": {"uid": "1"}, "next": None}, "without a `meters` list"),
    ],
)
@pytest.mark.django_db
def test_bad_pages_are_refused(vendor: Any, body: dict[str, Any], message: str) -> None:
    vendor.get(f"{BASE}/meters", json=body)
    with pytest.raises(BadResponse, match=message):
        registry.sync_meters()
    assert len(vendor.calls) == 2  # the token never went to another host


# --- pricing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("months", "price"),
    [(1, "1.50"), (7, "10.50"), (8, "12.00"), (12, "12.00"), (13, "13.50"), (36, "48.00")],
)
def test_price_table_boundaries(months: int, price: str) -> None:
    assert pricing.price_per_meter(months) == Decimal(price)


@pytest.mark.parametrize("months", [0, 37, -1])
def test_price_outside_1_to_36_is_refused(months: int) -> None:
    with pytest.raises(ValueError, match="from 1 to 36"):
        pricing.price_per_meter(months)


def test_prices_come_from_settings(settings: Any) -> None:
    settings.COLLECTIONS_PRICE_PER_MONTH = 2
    settings.COLLECTIONS_PRICE_FLAT_12 = "20.00"
    assert [pricing.price_per_meter(m) for m in (7, 8, 13)] == [14, 20, 22]


def test_estimates() -> None:
    assert str(pricing.estimate(2500, 12)) == "$30,000.00"
    unknown = pricing.estimate(3, None)
    assert unknown.is_range and (unknown.low, unknown.high) == (36, 144)
    assert str(unknown) == "$36.00 – $144.00"


# --- admin: list and bulk trigger -----------------------------------------------------------


def make_meters(count: int, prefix: str = "m", **flags: Any) -> list[Meter]:
    now = timezone.now()
    return Meter.objects.bulk_create(
        Meter(uid=f"{prefix}-{n:05}", authorization_uid=f"a-{n // 10}", synced_at=now, **flags)
        for n in range(count)
    )


def make_fleet(collectable: int) -> dict[str, list[Meter]]:
    """`collectable` meters, and 16 that are not (one both revoked and expired)."""
    return {
        "ok": make_meters(collectable),
        "revoked": make_meters(7, "rv", authorization_revoked=True),
        "expired": make_meters(5, "ex", authorization_expired=True),
        "archived": make_meters(3, "ar", is_archived=True),
        "both": make_meters(1, "rx", authorization_revoked=True, authorization_expired=True),
    }


@pytest.fixture
def fleet(db: None) -> dict[str, list[Meter]]:
    return make_fleet(2500)


@pytest.fixture
def few(db: None) -> dict[str, list[Meter]]:
    return make_fleet(20)


def staff(django_user_model: Any, name: str, *codenames: str) -> Client:
    """A logged-in staff browser that enforces CSRF like a real one."""
    user = django_user_model.objects.create_user(name, is_staff=True)  # no password to hash
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    browser.user = user  # type: ignore[attr-defined]
    return browser


@pytest.fixture
def operator(django_user_model: Any) -> Client:
    return staff(
        django_user_model, "op", "view_meter", "add_collectionrequest", "trigger_collection"
    )


@pytest.fixture
def viewer(django_user_model: Any) -> Client:
    return staff(django_user_model, "viewer", "view_meter")


def hidden_inputs(page: str) -> dict[str, list[str]]:
    """The hidden fields of a page's forms, as a browser would post them."""
    fields: dict[str, list[str]] = {}
    for tag in re.findall(r"<input[^>]*>", page):
        if 'type="hidden"' in tag and (name := re.search(r'name="([^"]*)"', tag)):
            value = re.search(r'value="([^"]*)"', tag)
            fields.setdefault(name.group(1), []).append(
                html.unescape(value.group(1) if value else "")
            )
    return fields


def choose_action(
    browser: Client, selected: list[Meter], across: bool = False, url: str = LIST
) -> Any:
    """Tick meters on the changelist at `url`, pick the action, press Go."""
    token = hidden_inputs(browser.get(url).content.decode())["csrfmiddlewaretoken"][0]
    return browser.post(
        url,
        {
            "action": "trigger_collection",
            "select_across": "1" if across else "0",
            "index": "0",
            ACTION_CHECKBOX_NAME: [m.pk for m in selected],
            "csrfmiddlewaretoken": token,
        },
    )


def press(browser: Client, page: Any, button: str, duration: str = "", url: str = LIST) -> Any:
    """Press a button of the confirmation page (`confirm` or `estimate`); the page posts to
    the URL it came from, so the changelist's filters still apply."""
    data: dict[str, Any] = hidden_inputs(page.content.decode())
    data.update({button: "x", "collection_duration": duration})
    data["typed_count"] = data.get("expected", "")  # typed, as asked above the threshold
    return browser.post(url, data)


def text(page: Any) -> str:
    """What a person reads on the page: tags dropped, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.content.decode())).split())


def test_changelist_shows_flags_last_request_and_searches_uids(
    few: dict[str, list[Meter]], operator: Client
) -> None:
    request = CollectionRequest.objects.create(meters=["m-00001"])
    Meter.objects.filter(uid="m-00001").update(last_request=request)
    page = operator.get(LIST, {"q": "m-00001, rx-00000 rv-00003"})
    body = page.content.decode()
    assert page.status_code == 200
    assert {"m-00001", "rx-00000", "rv-00003"} == {m.uid for m in page.context["cl"].result_list}
    assert ">revoked</span>" in body and ">expired</span>" in body
    link = reverse("admin:collections_app_collectionrequest_change", args=[request.pk])
    assert f'href="{link}"' in body
    filtered = operator.get(LIST, {"collectable": "no"})
    assert filtered.context["cl"].result_count == 16


def test_meters_are_read_only(few: dict[str, list[Meter]], operator: Client) -> None:
    meter = few["ok"][0]
    change = reverse("admin:collections_app_meter_change", args=[meter.pk])
    assert operator.get(change).status_code == 200  # a read-only view
    assert operator.get(reverse("admin:collections_app_meter_add")).status_code == 403
    delete = reverse("admin:collections_app_meter_delete", args=[meter.pk])
    assert operator.get(delete).status_code == 403


def test_bulk_trigger_bundles_and_skips(
    fleet: dict[str, list[Meter]], operator: Client, django_capture_on_commit_callbacks: Any
) -> None:
    page = choose_action(operator, fleet["ok"][:1], across=True)
    shown = text(page)
    assert page.status_code == 200 and not CollectionRequest.objects.exists()
    assert CONFIRMATION in [t.name for t in page.templates]
    assert page.context["plan"] == bulk_trigger.TriggerPlan(
        selected=2516, collectable=2500, revoked=8, expired=6, archived=3, waiting=0
    )
    assert "2500 meter(s) will be collected, in 3 collection request(s) of at most 1000" in shown
    assert "16 meter(s) skipped: 8 with a revoked authorization, 6 with an expired" in shown
    assert "$30,000.00 – $120,000.00" in shown  # 12 or 36 months: the account's default

    page = press(operator, page, "estimate", "24")
    assert "$75,000.00 for 2500 meter(s) × 24 month(s)" in text(page)
    assert not CollectionRequest.objects.exists()

    with django_capture_on_commit_callbacks() as sent:
        done = press(operator, page, "confirm", "24")
    assert done.status_code == 302 and done["Location"].startswith(LIST)
    assert sent == []  # the stored rows are the queue: a relay announces them
    assert broker.announce_due()[0] == 3  # one message per POST they need
    created = list(CollectionRequest.objects.order_by("created", "id"))
    assert sorted(len(r.meters) for r in created) == [500, 1000, 1000]
    assert {(r.source, r.collection_duration, r.requested_by) for r in created} == {
        ("registry", 24, operator.user)  # type: ignore[attr-defined]
    }
    sent_uids = [uid for r in created for uid in r.meters]
    assert sorted(sent_uids) == sorted(m.uid for m in fleet["ok"])
    for request in created:
        assert set(Meter.objects.filter(last_request=request).values_list("uid", flat=True)) == set(
            request.meters
        )
    assert not Meter.objects.exclude(COLLECTABLE).exclude(last_request=None).exists()


def test_double_submit_creates_nothing_more(few: dict[str, list[Meter]], operator: Client) -> None:
    page = choose_action(operator, few["ok"][:3])
    assert press(operator, page, "confirm", "6").status_code == 302
    again = press(operator, page, "confirm", "6")
    assert again.status_code == 200
    assert "3 of these meter(s) were triggered after this page was shown" in text(again)
    assert CollectionRequest.objects.count() == 1
    fresh = choose_action(operator, few["ok"][:4])  # the request is still unsent: say so
    assert fresh.context["plan"].waiting == 3
    assert "Warning: 3 meter(s) to collect already have a request waiting" in text(fresh)


def test_select_all_keeps_the_changelist_filter(
    few: dict[str, list[Meter]], operator: Client
) -> None:
    earlier = [m.uid for m in few["ok"][5:8]]
    bulk_trigger.trigger(
        Meter.objects.filter(uid__in=earlier),
        None,
        requested_by=None,
        expected=3,
        shown_at=timezone.now(),
    )
    filtered = f"{LIST}?last_request__status=submitted"
    page = choose_action(operator, few["ok"][5:6], across=True, url=filtered)
    assert page.context["plan"].selected == 3 and page.context["plan"].waiting == 3
    assert press(operator, page, "confirm", "2", url=filtered).status_code == 302
    latest = CollectionRequest.objects.get(collection_duration=2)
    assert latest.meters == earlier
    assert set(Meter.objects.filter(last_request=latest).values_list("uid", flat=True)) == set(
        earlier
    )


def test_selection_changed_since_the_page_was_shown(
    few: dict[str, list[Meter]], operator: Client
) -> None:
    chosen = few["ok"][:3]
    page = choose_action(operator, chosen)
    Meter.objects.filter(pk=chosen[0].pk).update(authorization_revoked=True)  # a sync ran
    again = press(operator, page, "confirm", "")
    assert "2 collectable meter(s) now, 3 then" in text(again)
    assert not CollectionRequest.objects.exists()
    done = press(operator, again, "confirm", "")  # the page shown again has the new numbers
    assert done.status_code == 302
    request = CollectionRequest.objects.get()
    assert request.meters == [m.uid for m in chosen[1:]] and request.collection_duration is None


def test_selected_meters_only_and_skipped_ones(
    few: dict[str, list[Meter]], operator: Client
) -> None:
    chosen = [*few["ok"][:2], few["revoked"][0], few["archived"][0]]
    page = choose_action(operator, chosen)
    assert page.context["plan"].selected == 4 and page.context["plan"].collectable == 2
    assert "$24.00 – $96.00" in text(page)
    assert press(operator, page, "confirm", "8").status_code == 302
    assert CollectionRequest.objects.get().meters == ["m-00000", "m-00001"]


def test_nothing_collectable(few: dict[str, list[Meter]], operator: Client) -> None:
    page = choose_action(operator, few["revoked"][:2] + few["expired"][:1])
    assert "None of the selected meters can be collected" in text(page)
    assert 'name="confirm"' not in page.content.decode()


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        ("0", "greater than or equal to 1"),
        ("37", "less than or equal to 36"),
        ("twelve", "Enter a whole number"),
        ("1.5", "Enter a whole number"),
    ],
)
def test_bad_duration_is_rejected(
    few: dict[str, list[Meter]], operator: Client, duration: str, message: str
) -> None:
    page = choose_action(operator, few["ok"][:1], across=True)
    refused = press(operator, page, "confirm", duration)
    assert refused.status_code == 200 and message in text(refused)
    assert not CollectionRequest.objects.exists()
    assert not Meter.objects.exclude(last_request=None).exists()


def test_batch_size_follows_the_setting(
    fleet: dict[str, list[Meter]], operator: Client, settings: Any
) -> None:
    settings.COLLECTIONS_MAX_METERS_PER_REQUEST = 600
    page = choose_action(operator, fleet["ok"][:1], across=True)
    assert page.context["plan"].requests == 5
    assert press(operator, page, "confirm", "1").status_code == 302
    sizes = sorted(len(m) for m in CollectionRequest.objects.values_list("meters", flat=True))
    assert sizes == [100, 600, 600, 600, 600]


def test_trigger_needs_the_permission(few: dict[str, list[Meter]], viewer: Client) -> None:
    assert 'value="trigger_collection"' not in viewer.get(LIST).content.decode()
    refused = choose_action(viewer, few["ok"][:5])
    assert refused.status_code in (200, 302)  # the changelist again: the action is not theirs
    assert CONFIRMATION not in [t.name for t in refused.templates]
    token = hidden_inputs(viewer.get(LIST).content.decode())["csrfmiddlewaretoken"][0]
    forged = viewer.post(
        LIST,
        {
            "action": "trigger_collection",
            ACTION_CHECKBOX_NAME: [few["ok"][0].pk],
            "select_across": "0",
            "confirm": "x",
            "expected": "1",
            "shown_at": datetime.now(UTC).isoformat(),
            "csrfmiddlewaretoken": token,
        },
    )
    assert CONFIRMATION not in [t.name for t in forged.templates]
    assert not CollectionRequest.objects.exists()


def test_confirmation_needs_the_csrf_token(few: dict[str, list[Meter]], operator: Client) -> None:
    page = choose_action(operator, few["ok"][:2])
    data = hidden_inputs(page.content.decode())
    del data["csrfmiddlewaretoken"]
    data["confirm"] = ["x"]
    assert operator.post(LIST, data).status_code == 403
    assert not CollectionRequest.objects.exists()


def test_trigger_service_refuses_stale_confirmations(few: dict[str, list[Meter]]) -> None:
    chosen = Meter.objects.filter(pk__in=[m.pk for m in few["ok"][:2]])
    shown_at = timezone.now() - timedelta(seconds=1)
    bulk_trigger.trigger(chosen, 3, requested_by=None, expected=2, shown_at=shown_at)
    with pytest.raises(bulk_trigger.TriggerConflict):
        bulk_trigger.trigger(chosen, 3, requested_by=None, expected=2, shown_at=shown_at)
    assert CollectionRequest.objects.count() == 1
