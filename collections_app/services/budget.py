"""Money at the door: what each request is estimated to cost, the daily and monthly budgets
that hold a request for a person's approval (COLLECTIONS_DAILY_BUDGET / _MONTHLY_BUDGET), and
that approval or rejection.

With a budget set, requests are admitted one at a time: a PostgreSQL advisory lock, held until
the storing transaction commits, covers reading what was let through and the INSERT, so two
concurrent requests cannot both pass on the same remaining dollars. What was let through is
read from DailySpend, the days' totals that triggers keep as requests are stored and change
(a handful of rows, however many requests the month holds). Without a budget nothing is
locked or read: storing stays one INSERT. A held row has no next_attempt_at, so no claim, relay
or sweep ever sees it due.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from .. import pricing
from ..models import REJECTED_OVER_BUDGET, CollectionRequest, DailySpend, Hold, Status
from ..permissions import may_trigger
from .transitions import transition

log = logging.getLogger(__name__)
LOCK_KEY = 0x636F6C6C  # the advisory lock every process admits under ("coll")
DECIDED_FIELDS = ["hold", "hold_reason", "next_attempt_at", "dispatched_at", "admitted_at"]


def estimated_cost(meters: int, months: int | None) -> Decimal:
    """The most a request can cost: the account's default duration counts as its dearest."""
    return pricing.estimate(meters, months).high.quantize(pricing.CENT)


def window_starts(now: datetime) -> dict[str, datetime]:
    """The UTC day and month that `now` falls in, by budget."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"daily": day, "monthly": day.replace(day=1)}


def limits() -> dict[str, Decimal]:
    """The budgets that are set, by name."""
    budgets = {
        "daily": settings.COLLECTIONS_DAILY_BUDGET,
        "monthly": settings.COLLECTIONS_MONTHLY_BUDGET,
    }
    return {name: Decimal(v).quantize(pricing.CENT) for name, v in budgets.items() if v is not None}


def let_through(since: datetime) -> QuerySet[CollectionRequest]:
    """Requests let through to be sent since `since` that count as spend: those UtilityAPI
    refused cost nothing (served by the `admitted` index). DailySpend's triggers (migration
    0009) keep the same rule."""
    admitted = CollectionRequest.objects.filter(admitted_at__gte=since)
    return admitted.exclude(status=Status.FAILED).order_by()


def spent(starts: dict[str, datetime]) -> dict[str, Decimal]:
    """Estimated dollars let through since each start (a UTC midnight): the days' totals the
    database keeps (DailySpend, at most 31 days of 16 rows), not a sum over the requests."""
    days = DailySpend.objects.filter(day__gte=min(starts.values()).date())
    sums = days.aggregate(
        **{name: Sum("dollars", filter=Q(day__gte=start.date())) for name, start in starts.items()}
    )
    return {name: sums[name] or Decimal(0) for name in starts}


@contextmanager
def admission() -> Iterator[None]:
    """The transaction to admit and store requests in. With a budget: atomic, holding the
    budget's lock until it ends. Without: a savepoint inside a caller's transaction, else
    nothing (the one INSERT commits by itself, sparing the BEGIN and COMMIT round trips)."""
    if not limits():
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            yield
        return
    with transaction.atomic():
        if connection.vendor == "postgresql":  # SQLite (make run) writes one at a time anyway
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        yield


def admit(rows: Sequence[CollectionRequest], now: datetime) -> None:
    """Let each new row through, or hold it when its estimate would take the day or the month
    over its budget (in order: a later, cheaper row may still fit). Call inside admission()."""
    budgets = limits()
    if not budgets:
        for row in rows:
            row.admitted_at = now
        return
    starts = {name: start for name, start in window_starts(now).items() if name in budgets}
    total = spent(starts)
    for row in rows:
        over = [name for name in budgets if total[name] + row.estimated_cost > budgets[name]]
        if over:
            _hold(row, over[0], total[over[0]], budgets[over[0]])
            continue
        row.admitted_at = now
        for name in budgets:
            total[name] += row.estimated_cost


def record_expected(successful: dict[Any, int]) -> None:
    """Store what these finished requests are expected to cost: UtilityAPI bills only the
    months collected, so a meter that finished successfully costs the months asked (the
    account's default counted as its dearest) and one that errored costs nothing."""
    rows = list(
        CollectionRequest.objects.filter(pk__in=list(successful)).only("pk", "collection_duration")
    )
    for row in rows:
        row.expected_cost = estimated_cost(successful[row.pk], row.collection_duration)
    CollectionRequest.objects.bulk_update(rows, ["expected_cost"])


def _hold(row: CollectionRequest, budget: str, spent: Decimal, limit: Decimal) -> None:
    period = "today (UTC)" if budget == "daily" else "this month (UTC)"
    usd = pricing.format_usd
    row.hold = Hold.BUDGET
    row.hold_reason = (
        f"Estimated {usd(row.estimated_cost)}; {usd(spent)} already let through {period}, "
        f"so it would pass the {budget} budget of {usd(limit)}. A person with the trigger "
        "permission approves or rejects it."
    )
    row.next_attempt_at = row.dispatched_at = row.admitted_at = None


def approve(requests: Iterable[Any], user: Any) -> list[CollectionRequest]:
    """Send these held requests (they then count against the budgets). Returns those
    approved: rows no longer held by the time they are locked are left alone."""
    with transaction.atomic():
        rows = _held(requests, user)
        now = timezone.now()
        for row in rows:
            row.hold = row.hold_reason = None
            row.next_attempt_at = row.dispatched_at = row.admitted_at = now
            row.save(update_fields=[*DECIDED_FIELDS, "updated"])
    log.info("%d held request(s) approved by %s", len(rows), user)
    return rows


def reject(requests: Iterable[Any], user: Any) -> list[CollectionRequest]:
    """Fail these held requests with `rejected_over_budget`: nothing is sent. Returns those
    rejected."""
    with transaction.atomic():
        rows = _held(requests, user)
        for row in rows:
            why = f"Rejected by {user}. {row.hold_reason}"
            transition(
                row,
                Status.FAILED,
                hold=None,
                hold_reason=None,
                error=REJECTED_OVER_BUDGET,
                error_description=why,
            )
            row.save(
                update_fields=["status", *DECIDED_FIELDS, "error", "error_description", "updated"]
            )
    log.info("%d held request(s) rejected by %s", len(rows), user)
    return rows


def _held(requests: Iterable[Any], user: Any) -> list[CollectionRequest]:
    """The given requests that are still held, locked; PermissionDenied unless `user` may
    trigger paid collections."""
    if not may_trigger(user):
        raise PermissionDenied(
            "Approving or rejecting a held request needs the trigger permission."
        )
    pks = [getattr(r, "pk", r) for r in requests]
    held = CollectionRequest.objects.filter(pk__in=pks, hold__isnull=False)
    return list(held.select_for_update().order_by("pk"))
