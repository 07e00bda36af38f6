"""Spending: the estimated and expected dollars let through per UTC day and month, by source
and by user, against the budgets, and what waits on hold for a person. Aggregates only, served
by the `admitted` and `held` indexes; the rule for what counts is services.budget's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Min, Q, Sum
from django.db.models.functions import TruncDay, TruncMonth

from ..models import CollectionRequest
from ..services import budget

DAYS_SHOWN = 31
MONTHS_SHOWN = 12
ZERO = Decimal("0.00")


def summary(now: datetime) -> dict[str, Any]:
    """Today's and this month's spend, each budget's room left, and the held requests."""
    starts = budget.window_starts(now)
    today = Q(admitted_at__gte=starts["daily"])
    sums = budget.let_through(starts["monthly"]).aggregate(
        today_estimated=Sum("estimated_cost", filter=today),
        today_expected=Sum("expected_cost", filter=today),
        month_estimated=Sum("estimated_cost"),
        month_expected=Sum("expected_cost"),
    )
    spend = {key: value or ZERO for key, value in sums.items()}
    limits = budget.limits()
    used = {"daily": spend["today_estimated"], "monthly": spend["month_estimated"]}
    return {
        **spend,
        "budgets": {
            name: {"limit": limit, "spent": used[name], "left": max(limit - used[name], ZERO)}
            for name, limit in limits.items()
        },
        "held": held(),
    }


def held() -> dict[str, Any]:
    rows = CollectionRequest.objects.filter(hold__isnull=False).order_by()
    figures = rows.aggregate(
        count=Count("*"), estimated=Sum("estimated_cost"), oldest=Min("created")
    )
    return {**figures, "estimated": figures["estimated"] or ZERO}


def breakdown(now: datetime) -> dict[str, list[dict[str, Any]]]:
    """Spend per day (the last DAYS_SHOWN) and per month (the last MONTHS_SHOWN), each split
    by source and user, newest first."""
    starts = budget.window_starts(now)
    return {
        "days": _per(TruncDay, starts["daily"] - timedelta(days=DAYS_SHOWN - 1)),
        "months": _per(TruncMonth, _months_before(starts["monthly"], MONTHS_SHOWN - 1)),
    }


def _months_before(month_start: datetime, months: int) -> datetime:
    """The first day of the month `months` before the month starting at `month_start`."""
    index = month_start.year * 12 + month_start.month - 1 - months
    return month_start.replace(year=index // 12, month=index % 12 + 1)


def _per(trunc: Any, since: datetime) -> list[dict[str, Any]]:
    rows = (
        budget.let_through(since)
        .annotate(period=trunc("admitted_at", tzinfo=UTC))
        .values("period", "source", "requested_by__username")
        .annotate(
            requests=Count("*"),
            estimated=Sum("estimated_cost"),
            expected=Sum("expected_cost"),
        )
        .order_by("-period", "source", "requested_by__username")
    )
    return [
        {
            "period": row["period"],
            "source": row["source"],
            "user": row["requested_by__username"] or "",
            "requests": row["requests"],
            "estimated": row["estimated"] or ZERO,
            "expected": row["expected"] or ZERO,
        }
        for row in rows
    ]
