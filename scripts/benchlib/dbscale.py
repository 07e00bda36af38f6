"""Scenario 5: the admin and the dashboard's JSON on a large table (100,000 requests and
300,000 attempts), timed through Django's test client with a logged-in staff session."""

from __future__ import annotations

import importlib.util
import statistics
import time
import uuid
from datetime import timedelta
from typing import Any

ADMIN = "/admin/collections_app/collectionrequest/"
METRICS = "/ops/metrics.json"
BATCH = 5000


def scale(bench: Any, pool: Any, requests: int, samples: int) -> dict[str, Any]:
    """Build the data, then time the pages while a worker runs (idle: no message is sent), as
    it would in production: the dashboard pings the workers."""
    from . import state

    attempts_each = 3
    state.wait_idle(bench.target)
    state.truncate()
    started = time.perf_counter()
    how = build(requests, attempts_each)
    built_s = time.perf_counter() - started
    client = _staff_client()
    with bench.worker(pool, {}):
        pages = {label: _time_get(client, url, samples) for label, url in _urls().items()}
    return {"requests": requests, "attempts": requests * attempts_each, "built_with": how,
            "build_s": built_s, "samples": samples, "pages": pages}  # fmt: skip


def _urls() -> dict[str, str]:
    from collections_app.models import CollectionRequest

    one = CollectionRequest.objects.order_by("-created").values_list("pk", "meters")[10]
    urls = {
        "admin changelist": ADMIN,
        "admin changelist, status=failed": ADMIN + "?status__exact=failed",
        "admin search by meter uid": ADMIN + f"?q={one[1][0]}",
        "admin change page (3 attempts)": f"{ADMIN}{one[0]}/change/",
    }
    if _resolves(METRICS):
        urls["ops metrics.json"] = METRICS
    return urls


def _resolves(path: str) -> bool:
    from django.urls import Resolver404, resolve

    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def _staff_client() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench").first()
    user = user or user_model.objects.create_superuser("bench", "bench@example.com", None)
    client = Client()
    client.force_login(user)
    return client


def _time_get(client: Any, url: str, samples: int) -> dict[str, Any]:
    """Median and max milliseconds of `samples` GETs after one warm-up, and the SQL count."""
    from django.db import connection

    queries: list[str] = []

    def count(execute: Any, sql: str, *args: Any) -> Any:
        queries.append(sql)
        return execute(sql, *args)

    with connection.execute_wrapper(count):
        status = client.get(url).status_code
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        client.get(url)
        times.append((time.perf_counter() - start) * 1000)
    return {"status": status, "median_ms": statistics.median(times), "max_ms": max(times),
            "queries": len(queries)}  # fmt: skip


# --- the data -------------------------------------------------------------------------------


def build(requests: int, attempts_each: int) -> str:
    """The ops app's sample-data builder when there is one, else a plain bulk_create."""
    if importlib.util.find_spec("sandbox.sample"):
        from sandbox import sample

        builder = getattr(sample, "build", None)
        if callable(builder):
            builder(requests=requests, attempts_per_request=attempts_each)
            return "sandbox.sample.build"
    _bulk_build(requests, attempts_each)
    return "scripts/benchlib/dbscale.py (bulk_create)"


def _bulk_build(requests: int, attempts_each: int) -> None:
    """A month of traffic: mostly pending, 5% failed, 2% submitted; each with its attempts."""
    from django.db import connection
    from django.utils import timezone

    now, step = timezone.now(), timedelta(days=30) / max(requests, 1)
    for first in range(0, requests, BATCH):
        rows = [_request(i, now - step * i) for i in range(first, min(first + BATCH, requests))]
        _save(rows, attempts_each)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE collections_app_collectionrequest, collections_app_attempt")


def _request(i: int, created: Any) -> Any:
    from collections_app.models import CollectionRequest

    status = "failed" if i % 20 == 0 else "submitted" if i % 50 == 1 else "pending"
    failed = status == "failed"
    meters = [f"sample-{i}-{k}" for k in range(1 + i % 3)]
    return CollectionRequest(
        id=uuid.uuid4(), status=status, meters=meters, collection_duration=12,
        accepted_meters=[] if failed else meters, attempts=3, source="registry",
        error="invalid_param" if failed else "", last_http_status=400 if failed else 200,
        error_description="Values in the meters list are invalid." if failed else "",
        next_attempt_at=created if status == "submitted" else None, created=created,
    )  # fmt: skip


def _save(rows: list[Any], attempts_each: int) -> None:
    from collections_app.models import Attempt, CollectionRequest

    created = {row.pk: row.created for row in rows}
    created_field = CollectionRequest._meta.get_field("created")
    created_field.auto_now_add = False  # keep the spread-out creation times (this process only)
    try:
        CollectionRequest.objects.bulk_create(rows)
    finally:
        created_field.auto_now_add = True
    Attempt.objects.bulk_create(
        Attempt(request_id=pk, call_id=uuid.uuid4(), started=at + timedelta(seconds=5 * k),
                duration_ms=50, status_code=503 if k < attempts_each - 1 else 200)
        for pk, at in created.items()
        for k in range(attempts_each)
    )  # fmt: skip
