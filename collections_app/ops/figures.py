"""The business figures behind the ops dashboard, read from the database (the truth).

Aggregate queries only: each function runs a fixed, small number of queries whatever the size
of the tables (COUNT/MIN/MAX with FILTER, GROUP BY a truncated date), served by the indexes
on CollectionRequest and Attempt; COUNT(*) rather than COUNT(id), so they are index-only
scans. Every function takes `now` so tests can pin the clock.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count, Max, Min, Q, QuerySet
from django.db.models.functions import TruncMinute
from django.urls import reverse

from ..models import (
    Attempt,
    CollectionOutcome,
    CollectionRequest,
    Event,
    MeterProgress,
    Status,
    VendorCall,
)
from ..services import leases
from . import shared, spending

BUCKET = timedelta(minutes=15)
BUCKETS = 96  # 24 hours
FAILURE_GROUPS_SHOWN = 20


def business(now: datetime) -> dict[str, Any]:
    """Every database figure the dashboard, the JSON and /metrics show: those over the whole
    table shared between viewers (shared.py), those about waiting work read now."""
    return {
        **shared.whole_table(now, lambda: whole_table(now)),
        "retries": retry_pipeline(now),
        "throttled": throttled_calls(now),
        "stalls": stalls(now),
        "spending": spending.summary(now),
    }


def whole_table(now: datetime) -> dict[str, Any]:
    """The figures whose cost grows with the table (index-only scans over every request, or
    over a day of them)."""
    counts = request_counts()
    return {
        "status": status_counts(counts),
        "timeline": timeline(now),
        "failures": failure_groups(now),
        "tracking": tracking(now, counts),
    }


Counts = list[tuple[str, str | None, int]]


def request_counts() -> Counts:
    """(status, collection_outcome, requests) for every pair present: one scan serves the
    status counts and the tracking figures."""
    rows = CollectionRequest.objects.order_by().values_list("status", "collection_outcome")
    return list(rows.annotate(n=Count("*")))


def status_counts(counts: Counts | None = None) -> dict[str, int]:
    """Requests by status now, every status present (0 when none), plus the total."""
    totals = dict.fromkeys(Status.values, 0)
    for status, _, n in request_counts() if counts is None else counts:
        totals[status] = totals.get(status, 0) + n
    totals["total"] = sum(totals.values())
    return totals


# --- the last 24 hours ------------------------------------------------------------------------


def bucket_start(moment: datetime) -> datetime:
    """The start of the 15-minute bucket holding `moment`."""
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def timeline(now: datetime) -> dict[str, Any]:
    """Requests created, accepted (became pending) and failed per 15 minutes over 24 hours.

    Pending and failed are final until an operator retries, so a final row's `updated` is
    the moment it got its status."""
    start = bucket_start(now) - BUCKET * (BUCKETS - 1)
    rows = CollectionRequest.objects.filter
    series = {
        "created": _per_bucket(rows(created__gte=start), "created"),
        "accepted": _per_bucket(rows(status=Status.PENDING, updated__gte=start), "updated"),
        "failed": _per_bucket(rows(status=Status.FAILED, updated__gte=start), "updated"),
    }
    starts = [start + BUCKET * i for i in range(BUCKETS)]
    buckets = [{"t": t, **{name: counts[t] for name, counts in series.items()}} for t in starts]
    return {"bucket_minutes": BUCKET.seconds // 60, "start": start, "buckets": buckets}


def _per_bucket(queryset: QuerySet, field: str) -> Counter[datetime]:
    """Row counts per 15-minute bucket of `field`: grouped by minute in SQL, folded here."""
    per_minute = (
        queryset.order_by().annotate(minute=TruncMinute(field)).values_list("minute")
    ).annotate(n=Count("*"))
    counts: Counter[datetime] = Counter()
    for minute, n in per_minute:
        counts[bucket_start(minute)] += n
    return counts


# --- retries, throttling, stalls --------------------------------------------------------------


def retry_pipeline(now: datetime) -> dict[str, Any]:
    """Submitted requests: due now, waiting for a retry (an attempt made, or a later time set),
    when the next one is due, and how many attempts they have used so far."""
    submitted = CollectionRequest.objects.filter(status=Status.SUBMITTED).order_by()
    figures = submitted.aggregate(
        due_now=Count("pk", filter=Q(next_attempt_at__lte=now)),
        waiting_retry=Count("pk", filter=Q(attempts__gt=0) | Q(next_attempt_at__gt=now)),
        in_flight=Count("pk", filter=Q(lease_expires_at__gt=now)),
        next_due_at=Min("next_attempt_at", filter=Q(next_attempt_at__gt=now)),
    )
    per_attempts = submitted.values_list("attempts").annotate(n=Count("pk")).order_by("attempts")
    figures["attempts_histogram"] = {str(attempts): n for attempts, n in per_attempts}
    figures["max_attempts"] = settings.COLLECTIONS_MAX_ATTEMPTS
    return figures


def throttled_calls(now: datetime) -> dict[str, Any]:
    """POSTs answered 429 in the last hour (one POST carries many requests: distinct call_id)."""
    return Attempt.objects.filter(status_code=429, started__gte=now - timedelta(hours=1)).aggregate(
        calls_last_hour=Count("call_id", distinct=True), last_at=Max("started")
    )


def stalls(now: datetime) -> dict[str, Any]:
    """The oldest submitted request; due rows nobody picked up for longer than the warning
    threshold; and claimed rows whose attempt has run longer than the HTTP timeouts allow.
    Held requests wait for a person, not for the machinery: the spending panel shows them."""
    threshold = settings.OPS_STALL_WARNING_SECONDS
    # A lease runs lease_seconds() from its claim; past the HTTP timeouts only the margin is left.
    margin = leases.lease_seconds() - http_timeout()
    overdue = Q(next_attempt_at__lt=now - timedelta(seconds=threshold), lease_expires_at=None)
    long_running = Q(lease_expires_at__lt=now + timedelta(seconds=margin))
    figures = (
        CollectionRequest.objects.filter(status=Status.SUBMITTED, hold__isnull=True)
        .order_by()
        .aggregate(
            oldest_created=Min("created"),
            overdue=Count("pk", filter=overdue),
            long_running=Count("pk", filter=long_running),
            earliest_lease_expiry=Min("lease_expires_at"),
        )
    )
    return _with_ages(figures, now, threshold)


def http_timeout() -> float:
    return settings.UTILITYAPI_CONNECT_TIMEOUT + settings.UTILITYAPI_READ_TIMEOUT


def _with_ages(figures: dict[str, Any], now: datetime, threshold: int) -> dict[str, Any]:
    oldest, expiry = figures.pop("oldest_created"), figures.pop("earliest_lease_expiry")
    claimed_at = expiry - timedelta(seconds=leases.lease_seconds()) if expiry else None
    return {
        "oldest_submitted_at": oldest,
        "oldest_submitted_age_seconds": (now - oldest).total_seconds() if oldest else None,
        "warning_after_seconds": threshold,
        "overdue": figures["overdue"],
        "long_running": figures["long_running"],
        "longest_running_seconds": (now - claimed_at).total_seconds() if claimed_at else None,
        "http_timeout_seconds": http_timeout(),
    }


# --- collection tracking --------------------------------------------------------------------


def tracking(now: datetime, counts: Counts | None = None) -> dict[str, Any]:
    """Accepted requests whose collection still runs, those finished today (UTC) by outcome,
    the oldest meter still collecting, and the tracking calls to UtilityAPI in the last hour."""
    counts = request_counts() if counts is None else counts
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = dict(
        CollectionRequest.objects.order_by()
        .filter(collection_outcome__isnull=False, collection_finished_at__gte=day)
        .values_list("collection_outcome")
        .annotate(n=Count("*"))
    )
    pending = {outcome: n for status, outcome, n in counts if status == Status.PENDING}
    figures = {
        "in_progress": pending.get(None, 0),
        "finished_today": sum(today.values()),
        "errored": pending.get(CollectionOutcome.COLLECTION_ERRORED, 0),
        **{f"{outcome}_today": today.get(outcome, 0) for outcome in CollectionOutcome.values},
    }
    collecting = MeterProgress.objects.filter(result="", request__collection_outcome__isnull=True)
    meters = collecting.order_by().aggregate(
        meters_collecting=Count("pk"), oldest=Min("accepted_at")
    )
    oldest = meters.pop("oldest")
    return {
        **figures,
        **meters,
        "oldest_unfinished_at": oldest,
        "oldest_unfinished_age_seconds": (now - oldest).total_seconds() if oldest else None,
        "events_unprocessed": Event.objects.filter(processed_at=None).count(),
        "calls": tracking_calls(now),
    }


def tracking_calls(now: datetime) -> dict[str, Any]:
    """GET /events, GET /meters and PATCH /events/{uid} calls in the last hour."""
    failed = Q(status_code__isnull=True) | ~Q(status_code__range=(200, 299))
    return VendorCall.objects.filter(started__gte=now - timedelta(hours=1)).aggregate(
        last_hour=Count("pk"), failed_last_hour=Count("pk", filter=failed), last_at=Max("started")
    )


# --- failures ---------------------------------------------------------------------------------


def failure_groups(now: datetime) -> list[dict[str, Any]]:
    """Failed requests grouped by error type, largest first, each with the latest failure's
    description (the vendor's words) and a link to the admin list filtered to the group."""
    groups = list(
        CollectionRequest.objects.filter(status=Status.FAILED)
        .order_by()
        .values("error")
        .annotate(
            count=Count("*"),
            last_24h=Count("updated", filter=Q(updated__gte=now - BUCKET * BUCKETS)),
            last_hour=Count("updated", filter=Q(updated__gte=now - timedelta(hours=1))),
            latest_at=Max("updated"),
        )
        .order_by("-count", "error")[:FAILURE_GROUPS_SHOWN]
    )
    for group in groups:
        group["sample"] = _latest_description(group["error"])
        group["admin_url"] = failed_admin_url(group["error"])
    return groups


def _latest_description(error: str) -> str:
    latest = (
        CollectionRequest.objects.filter(status=Status.FAILED, error=error)
        .order_by("-updated")
        .values_list("error_description", flat=True)
        .first()
    )
    return latest or ""


def failed_admin_url(error: str) -> str:
    """The admin changelist filtered to failed requests with this error (its list_filter)."""
    query = urlencode({"status__exact": Status.FAILED, "error": error})
    return f"{reverse('admin:collections_app_collectionrequest_changelist')}?{query}"
