"""Money in the faces: the API's and CLI's hold, the admin's approval and spending page, the
dashboard's spending panel, /metrics, and the expected charge once a collection finishes."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from collections_app import services
from collections_app.models import (
    REJECTED_OVER_BUDGET,
    CollectionRequest,
    EventSource,
    Hold,
    Source,
    Status,
)
from collections_app.ops import spending
from collections_app.services import tokens, tracking

pytestmark = pytest.mark.django_db
PERMS = ["add_collectionrequest", "trigger_collection", "view_collectionrequest"]


def staff(username: str = "ops", codenames: list[str] = PERMS) -> tuple[User, Client]:
    user = User.objects.create_user(username, password="pw-for-tests", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return user, client


@pytest.fixture
def budget_30(settings: Any) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("30")


def test_the_api_answers_202_with_the_hold_and_its_reason(budget_30: None) -> None:
    user, _ = staff()
    _, token = tokens.issue(user)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    bodies = [
        api.post(
            "/api/collections/",
            {"meters": [f"m-{i}"], "collection_duration": 12},
            content_type="application/json",
        )
        for i in range(3)
    ]
    assert [b.status_code for b in bodies] == [202, 202, 202]
    first, _, third = (b.json() for b in bodies)
    assert first["estimated_cost"] == "12.00" and first["hold"] is None
    assert first["hold_reason"] is None and first["expected_cost"] is None
    assert third["status"] == "submitted" and third["hold"] == "budget"
    assert "daily budget of $30.00" in third["hold_reason"]
    again = api.get(f"/api/collections/{third['id']}/").json()
    assert again["hold"] == "budget" and again["next_attempt_at"] is None


def test_the_cli_says_a_held_request_waits_and_wait_exits_3_at_once(budget_30: None) -> None:
    services.request_collection(["m-1", "m-2"], 12)  # $24 of $30
    out, err = io.StringIO(), io.StringIO()
    call_command("request_collection", "m-3", "--duration", "12", stdout=out, stderr=err)
    assert json.loads(out.getvalue())["hold"] == "budget" and "on hold" in err.getvalue()
    with pytest.raises(CommandError, match="on hold") as raised:
        call_command("request_collection", "m-4", "--duration", "12", "--wait", "60", stdout=out)
    assert raised.value.returncode == 3


def held_requests() -> list[CollectionRequest]:
    services.request_collection(["m-1", "m-2"], 12)
    return [services.request_collection([f"h-{i}"], 12) for i in range(2)]


def test_the_admin_approves_and_rejects_held_requests_and_logs_who(budget_30: None) -> None:
    approve, reject = held_requests()
    user, client = staff()
    changelist = "/admin/collections_app/collectionrequest/"
    page = client.get(changelist, {"hold__exact": "budget"})
    assert "2 request(s) are held over the budget" in page.content.decode()
    for action, row in (("approve_held", approve), ("reject_held", reject)):
        answer = client.post(changelist, {"action": action, "_selected_action": [row.pk]})
        assert answer.status_code == 302
    approve.refresh_from_db()
    reject.refresh_from_db()
    assert approve.hold is None and approve.next_attempt_at is not None
    assert reject.status == Status.FAILED and reject.error == REJECTED_OVER_BUDGET
    logged = LogEntry.objects.filter(user=user).values_list("object_id", "change_message")
    assert dict(logged) == {
        str(approve.pk): "Held request approved: they are sent now.",
        str(reject.pk): "Held request rejected: failed, nothing sent.",
    }


def test_without_the_trigger_permission_the_admin_decides_nothing(budget_30: None) -> None:
    row, _ = held_requests()
    _, client = staff("viewer", ["view_collectionrequest"])
    detail = client.get(f"/admin/collections_app/collectionrequest/{row.pk}/change/")
    assert "On hold" in detail.content.decode() and "approve_held" not in detail.content.decode()
    client.post(
        "/admin/collections_app/collectionrequest/",
        {"action": "approve_held", "_selected_action": [row.pk]},
    )
    row.refresh_from_db()
    assert row.hold == Hold.BUDGET and row.next_attempt_at is None


def test_the_spending_page_splits_per_day_and_month_by_source_and_user(budget_30: None) -> None:
    user, client = staff()
    services.request_collection(["m-1"], 12, source=Source.API, requested_by=user)
    services.request_collection(["m-2"], 6, source=Source.CLI)
    held_one = services.request_collection(["m-3", "m-4"], 12)  # $24 more: held
    assert held_one.hold == Hold.BUDGET
    days = spending.breakdown(timezone.now())["days"]
    assert [(r["source"], r["user"], r["estimated"]) for r in days] == [
        ("api", "ops", Decimal("12.00")),
        ("cli", "", Decimal("9.00")),
    ]
    page = client.get("/admin/collections_app/collectionrequest/spending/").content.decode()
    assert "$21.00 estimated" in page and "$9.00 left of $30.00" in page
    assert "1 request(s), $24.00 estimated" in page
    _, viewer = staff("nobody", [])
    assert viewer.get("/admin/collections_app/collectionrequest/spending/").status_code == 403


def test_the_dashboard_and_metrics_show_spend_budgets_and_holds(
    budget_30: None, redis_db: Any
) -> None:
    held_requests()
    _, client = staff()
    snap = client.get("/ops/metrics.json").json()
    money = snap["spending"]
    assert money["today_estimated"] == "24.00" and money["held"]["count"] == 2
    assert money["budgets"]["daily"] == {"limit": "30.00", "spent": "24.00", "left": "6.00"}
    assert snap["panels"]["spending"] == "warn"
    assert any("2 request(s) held over the budget" in a["message"] for a in snap["alerts"])
    text = client.get("/metrics").content.decode()
    assert 'collections_spend_estimated_dollars{period="today"} 24.0' in text
    assert 'collections_budget_left_dollars{budget="daily"} 6.0' in text
    assert "collections_requests_held 2.0" in text
    assert "panel-spending" in client.get("/ops/").content.decode()


def test_the_expected_charge_counts_only_meters_collected(
    django_capture_on_commit_callbacks: Any,
) -> None:
    request = CollectionRequest.objects.create(
        meters=["a", "b", "c"], accepted_meters=["a", "b", "c"], status=Status.PENDING,
        collection_duration=12, estimated_cost=Decimal("36.00"),
    )  # fmt: skip
    tracking.begin([request])
    events = [
        {"uid": f"e-{m}", "type": f"meter_historical_collection_{stage}", "meter_uid": m,
         "ts": timezone.now().isoformat()}
        for m, stage in (("a", "finished_successful"), ("b", "finished_successful"),
                         ("c", "finished_errored"))
    ]  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        tracking.receive([tracking.parse_event(e) for e in events], EventSource.WEBHOOK)
        tracking.process_events()
    request.refresh_from_db()
    assert request.collection_outcome == "partially_collected"
    assert request.expected_cost == Decimal("24.00")  # two meters collected, one errored: $0


def test_the_monthly_table_covers_the_last_twelve_months_exactly() -> None:
    now = timezone.now()
    this_month = now.replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    shown, too_old = (services.request_collection([f"m-{i}"], 12) for i in (1, 2))
    months_back = {shown.pk: spending.MONTHS_SHOWN - 1, too_old.pk: spending.MONTHS_SHOWN}
    for pk, back in months_back.items():
        index = this_month.year * 12 + this_month.month - 1 - back
        when = this_month.replace(year=index // 12, month=index % 12 + 1)
        CollectionRequest.objects.filter(pk=pk).update(admitted_at=when)
    months = spending.breakdown(now)["months"]
    assert [row["requests"] for row in months] == [1]
    assert months[0]["period"].month == (this_month.month - spending.MONTHS_SHOWN) % 12 + 1
