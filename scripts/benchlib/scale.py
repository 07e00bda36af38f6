"""Database scale: on the sample dataset (`manage.py ops_sample_data`), the time of each page
and of one sweep, EXPLAIN (ANALYZE) of the slowest query of each, and a large queue drained."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from . import run, state
from .run import LATENCY_MS, RATE, Bench, call_log

ADMIN = "/admin/collections_app/collectionrequest/"
PLAN_LINES = 40  # of each EXPLAIN kept in the report


def scale(bench: Bench) -> dict[str, Any]:
    """Build the data, time the pages while an idle worker runs (the dashboard pings the
    workers), time the sweep, then drain a queue of one-meter requests stored with no worker."""
    n, attempts_each = bench.counts["scale"], 3
    bench.sandbox.configure(RATE, LATENCY_MS)
    bench.reset()
    started = time.perf_counter()
    state.manage(bench.target, "ops_sample_data", "--force", "--requests", str(n),
                 "--attempts-per-request", str(attempts_each))  # fmt: skip
    build_s = time.perf_counter() - started
    client, samples = _staff_client(), bench.counts["scale_samples"]
    with bench.worker({}):
        timed = {page: _timed(partial(client.get, url), samples) for page, url in _urls().items()}
        timed["one sweep"] = _timed(_sweep, samples)
        state.wait_idle(bench.target)
    return {"requests": n, "attempts": n * attempts_each, "build_s": build_s, "samples": samples,
            "pages": timed, "drain": _drain_queue(bench)}  # fmt: skip


def _urls() -> dict[str, str]:
    from collections_app.models import CollectionRequest

    pk, meters = CollectionRequest.objects.order_by("-created").values_list("pk", "meters")[10]
    return {
        "dashboard JSON (/ops/metrics.json)": "/ops/metrics.json",
        "admin changelist": ADMIN,
        "admin changelist, status=failed": ADMIN + "?status__exact=failed",
        "admin search by meter uid": ADMIN + f"?q={meters[0]}",
        "admin change page": f"{ADMIN}{pk}/change/",
        "API list (/api/collections/)": "/api/collections/",
    }


def _sweep() -> Any:
    from collections_app import services

    return services.sweep()


def _staff_client() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench").first()
    user = user or user_model.objects.create_superuser("bench", "bench@example.com", None)
    client = Client()
    client.force_login(user)
    return client


def _timed(work: Callable[[], Any], samples: int) -> dict[str, Any]:
    """Median and max ms of `samples` calls after one warm-up that records every query; the
    slowest of those on the service's tables is explained."""
    from django.db import connection

    queries: list[tuple[float, str, Any]] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append((time.perf_counter() - start, sql, params))

    with connection.execute_wrapper(record):
        answer = work()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    ours = [q for q in queries if "collections_app_" in q[1]] or queries
    slowest = max(ours, key=lambda q: q[0], default=None)
    return {"status": getattr(answer, "status_code", 200), "median_ms": statistics.median(times),
            "max_ms": max(times), "queries": len(queries),
            "explain": _explain(slowest[1], slowest[2]) if slowest else ""}  # fmt: skip


def _explain(sql: str, params: Any) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) in a transaction rolled back (the sweep's queries write)."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        plan = [row[0] for row in cursor.fetchall()]
        transaction.set_rollback(True)
    cut = plan[:PLAN_LINES] + (["…"] if len(plan) > PLAN_LINES else [])
    return "\n".join([sql if len(sql) < 600 else sql[:600] + " …", "", *cut])


def _drain_queue(bench: Bench) -> dict[str, Any]:
    """One-meter requests stored with no worker running on top of the dataset, then drained
    by one worker with the defaults; timed from the moment it is ready."""
    from django.db.models import Max
    from django.utils import timezone

    from collections_app.models import CollectionRequest

    n, since = bench.counts["scale_queue"], timezone.now()
    bench.stop_worker()
    bench.sandbox.control("reset")
    run.queue(run.one_meter_groups(n, "queued"))
    created = state.queued_messages(bench.target)
    rows = CollectionRequest.objects.filter(created__gte=since)
    with bench.worker({}):
        start = time.time()
        run.wait_until(lambda: not rows.filter(status="submitted").exists(), 120 + n / 50, "drain")
    last = rows.aggregate(last=Max("updated"))["last"].timestamp()
    calls = call_log(bench)
    return {"requests": n, "drain_s": last - start, "rps": n / (last - start),
            "calls": calls["calls"], "status_429": calls["status_429"],
            "messages_created": created}  # fmt: skip
