"""Money at the door: estimated costs, budgets that hold requests, approval and rejection."""

from __future__ import annotations

import contextlib
import importlib
import threading
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import connection
from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from collections_app import services
from collections_app.models import (
    REJECTED_OVER_BUDGET,
    CollectionRequest,
    DailySpend,
    Hold,
    Status,
)
from collections_app.services import broker, budget, leases
from collections_app.signals import request_resolved
from project.settings import env_dollars

pytestmark = pytest.mark.django_db


def trigger_user(username: str = "ops") -> User:
    user = User.objects.create_user(username, password="x", is_staff=True)
    perms = Permission.objects.filter(codename__in=["add_collectionrequest", "trigger_collection"])
    user.user_permissions.add(*perms)
    return User.objects.get(pk=user.pk)  # a fresh object: no permission cache


def at_once(caller: Any, count: int) -> None:
    """caller(0) … caller(count - 1), each in its own thread, all running together."""
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def test_each_request_carries_its_estimate_from_the_price_table() -> None:
    three_for_a_year = services.request_collection(["m-1", "m-2", "m-3"], 12)
    default = services.request_collection(["m-4"])
    six = services.request_collection(["m-5"], 6)
    assert three_for_a_year.estimated_cost == Decimal("36.00")  # $12 flat each
    assert default.estimated_cost == Decimal("48.00")  # the dearest default: 36 months
    assert six.estimated_cost == Decimal("9.00")  # $1.50 a month
    assert three_for_a_year.hold is None and three_for_a_year.admitted_at is not None


def test_without_a_budget_storing_reads_nothing_first(settings: Any) -> None:
    """No budget, no lock and no sum: the caller's cost stays one INSERT."""
    settings.COLLECTIONS_DAILY_BUDGET = settings.COLLECTIONS_MONTHLY_BUDGET = None
    with CaptureQueriesContext(connection) as queries:
        services.request_collection(["m-1"], 12)
    statements = [q["sql"].split()[0] for q in queries.captured_queries]
    assert [s for s in statements if s not in ("SAVEPOINT", "RELEASE")] == ["INSERT"]


def test_a_request_over_the_daily_budget_is_stored_held_and_never_due(settings: Any) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("30")
    first, second = (services.request_collection([f"m-{i}"], 12) for i in (1, 2))
    third = services.request_collection(["m-3"], 12)
    assert first.hold is None and second.hold is None
    third.refresh_from_db()
    assert third.status == Status.SUBMITTED and third.hold == Hold.BUDGET
    assert "$24.00 already let through today" in third.hold_reason
    assert "daily budget of $30.00" in third.hold_reason
    assert third.next_attempt_at is None and third.admitted_at is None
    assert set(broker.due(timezone.now())) == {first, second}
    claimed = {row.pk for _ in range(3) for row in leases.claim(None, "t")}
    assert claimed == {first.pk, second.pk}  # the held one is never claimed
    assert broker.sweep()["requeued"] == 0


def test_a_cheaper_request_still_fits_after_a_held_one(settings: Any) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("20")
    services.request_collection(["m-1"], 12)  # $12
    held = services.request_collection(["m-2"], 12)  # would make $24
    fits = services.request_collection(["m-3"], 4)  # $6: $18
    assert held.hold == Hold.BUDGET and fits.hold is None


def test_the_monthly_budget_counts_earlier_days_of_the_month_only(settings: Any) -> None:
    settings.COLLECTIONS_MONTHLY_BUDGET = Decimal("30")
    month_start = budget.window_starts(timezone.now())["monthly"]
    last_month = services.request_collection(["m-1", "m-2"], 12)  # $24
    CollectionRequest.objects.filter(pk=last_month.pk).update(
        admitted_at=month_start - timedelta(seconds=1)
    )
    this_month = services.request_collection(["m-3", "m-4"], 12)  # $24: last month's not counted
    assert this_month.hold is None
    CollectionRequest.objects.filter(pk=this_month.pk).update(admitted_at=month_start)
    held = services.request_collection(["m-5"], 12)  # $12 more than the month's $30
    assert held.hold == Hold.BUDGET and "monthly budget of $30.00" in held.hold_reason
    assert "$24.00 already let through this month" in held.hold_reason


def test_requests_utilityapi_refused_cost_nothing(settings: Any) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("12")
    refused = services.request_collection(["m-1"], 12)
    CollectionRequest.objects.filter(pk=refused.pk).update(status=Status.FAILED)
    assert services.request_collection(["m-2"], 12).hold is None


def test_bulk_requests_are_admitted_in_order_against_the_budget(settings: Any) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("30")
    rows = services.request_collections([["a"], ["b"], ["c"], ["d"]], 12)
    assert [row.hold for row in rows] == [None, None, Hold.BUDGET, Hold.BUDGET]
    stored = CollectionRequest.objects.filter(hold__isnull=False, next_attempt_at__isnull=True)
    assert stored.count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_cannot_both_pass_on_the_same_dollars(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three $12 requests against $30 at once: whatever the interleaving, two are let through.
    Each caller dawdles after reading the sum, so without the lock all three would read $0."""
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("30")
    read_sum = budget.spent
    everyone_read = threading.Barrier(3, timeout=0.5)

    def slow_spent(starts: Any) -> Any:
        total = read_sum(starts)
        with contextlib.suppress(threading.BrokenBarrierError):
            everyone_read.wait()  # only meets when no lock keeps the others out
        return total

    monkeypatch.setattr(budget, "spent", slow_spent)
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            services.request_collection([f"m-{i}"], 12)
        except BaseException as err:  # reported below
            errors.append(err)
        finally:
            connection.close()

    at_once(caller, 3)
    assert errors == []
    holds = sorted(str(h) for h in CollectionRequest.objects.values_list("hold", flat=True))
    assert holds == ["None", "None", Hold.BUDGET]


def sums_by_day() -> dict[Any, Decimal]:
    """What counts, summed over the requests themselves (let_through's rule), per UTC day."""
    rows = budget.let_through(timezone.now() - timedelta(days=400))
    days = rows.annotate(day=TruncDate("admitted_at", tzinfo=UTC)).values_list("day")
    return dict(days.annotate(dollars=Sum("estimated_cost")))


def ledger_by_day() -> dict[Any, Decimal]:
    days = DailySpend.objects.order_by().values_list("day").annotate(dollars=Sum("dollars"))
    return {day: dollars for day, dollars in days if dollars}


def test_the_days_totals_follow_every_change_of_what_counts(settings: Any) -> None:
    """The triggers keep DailySpend equal to the sum over the requests through each way a
    request starts or stops counting: stored, held, approved, failed, retried, rejected,
    moved to another day, repriced."""
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("40")
    rows = CollectionRequest.objects.filter
    first = services.request_collection(["m-1"], 12)  # $12
    bulk = services.request_collections([["m-2"], ["m-3", "m-4"]], 6)  # $9, $18
    held = services.request_collection(["m-5"], 12)  # over $40: held, not counted
    steps = [
        lambda: budget.approve([held], trigger_user()),
        lambda: rows(pk=first.pk).update(status=Status.FAILED),
        lambda: services.retry_failed([first]),
        lambda: rows(pk=bulk[1].pk).update(admitted_at=timezone.now() - timedelta(days=3)),
        lambda: rows(pk=bulk[0].pk).update(estimated_cost=Decimal("7.25")),
        lambda: budget.reject([services.request_collection(["m-6"], 24)], trigger_user("b")),
        lambda: rows(pk=held.pk).update(status=Status.PENDING),
    ]
    assert held.hold == Hold.BUDGET
    assert ledger_by_day() == sums_by_day() and len(sums_by_day()) == 1
    for step in steps:
        step()
        assert ledger_by_day() == sums_by_day()
    assert len(sums_by_day()) == 2  # the request moved three days back
    starts = budget.window_starts(timezone.now())
    assert budget.spent(starts)["daily"] == Decimal("12") + Decimal("7.25") + Decimal("12")


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_without_a_budget_are_all_counted() -> None:
    """Callers storing at once share a day's total without losing an addition."""

    def caller(k: int) -> None:
        try:
            for i in range(15):
                services.request_collection([f"m-{k}-{i}"], 12)
        finally:
            connection.close()

    at_once(caller, 6)
    assert ledger_by_day() == sums_by_day() == {timezone.now().astimezone(UTC).date(): 90 * 12}
    assert DailySpend.objects.count() <= 16


def test_the_migration_counts_the_days_already_let_through() -> None:
    migration = importlib.import_module("collections_app.migrations.0009_spend_ledger")
    services.request_collections([["m-1"], ["m-2"]], 12)
    CollectionRequest.objects.filter(meters=["m-2"]).update(
        admitted_at=timezone.now() - timedelta(days=40)
    )
    DailySpend.objects.all().delete()  # as before the migration
    migration.count_what_was_let_through(django_apps, None)
    assert ledger_by_day() == sums_by_day() and len(ledger_by_day()) == 2


def test_approval_sends_a_held_request_and_counts_it(settings: Any) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("12")
    services.request_collection(["m-1"], 12)
    held = services.request_collection(["m-2"], 12)
    (approved,) = budget.approve([held], trigger_user())
    held.refresh_from_db()
    assert approved.pk == held.pk and held.hold is None and held.hold_reason is None
    assert held.next_attempt_at is not None and held.admitted_at is not None
    assert held.pk in {row.pk for row in leases.claim(held.pk, "t")}
    assert budget.spent(budget.window_starts(timezone.now()))["daily"] == Decimal("24.00")
    assert budget.approve([held], trigger_user("other")) == []  # no longer held: left alone


def test_rejection_fails_a_held_request_and_tells_the_caller(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("12")
    services.request_collection(["m-1"], 12)
    held = services.request_collection(["m-2"], 12)
    told: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        told.append(sender.pk)

    request_resolved.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            (rejected,) = budget.reject([held], trigger_user())
    finally:
        request_resolved.disconnect(receiver)
    held.refresh_from_db()
    assert held.status == Status.FAILED and held.error == REJECTED_OVER_BUDGET
    assert held.hold is None and "Rejected by ops" in held.error_description
    assert held.attempts == 0 and not held.http_attempts.exists()
    assert told == [held.pk] and rejected.pk == held.pk


@pytest.mark.parametrize("decide", [budget.approve, budget.reject])
def test_a_user_without_the_trigger_permission_decides_nothing(settings: Any, decide: Any) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("1")
    held = services.request_collection(["m-1"], 12)
    viewer = User.objects.create_user("viewer", is_staff=True)
    with pytest.raises(PermissionDenied, match="trigger permission"):
        decide([held], viewer)
    held.refresh_from_db()
    assert held.hold == Hold.BUDGET and held.status == Status.SUBMITTED


@pytest.mark.parametrize("raw", ["0", "-5", "abc", "1.005", "1e30", "nan", "inf"])
def test_a_budget_that_is_not_a_positive_amount_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("COLLECTIONS_DAILY_BUDGET", raw)
    with pytest.raises(ImproperlyConfigured, match="positive amount of dollars"):
        env_dollars("COLLECTIONS_DAILY_BUDGET")


@pytest.mark.parametrize(("raw", "amount"), [("250", "250"), (" 99.50 ", "99.50"), ("", None)])
def test_a_budget_is_read_in_dollars(
    monkeypatch: pytest.MonkeyPatch, raw: str, amount: Any
) -> None:
    monkeypatch.setenv("COLLECTIONS_DAILY_BUDGET", raw)
    expected = None if amount is None else Decimal(amount)
    assert env_dollars("COLLECTIONS_DAILY_BUDGET") == expected
