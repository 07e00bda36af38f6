"""The callers' side: what storing a request costs (against a plain INSERT + `delay()`),
POST /api/collections/ through the Procfile's web server (against its /healthz), and how long
a frozen broker holds the caller."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from functools import cache
from typing import Any

import requests

from . import state
from .rig import Web, wait_until
from .run import LATENCY_MS, RATE, Bench, call_log, result

API_PATH = "/api/collections/"
USER = "bench"
CLIENTS = 16
NO_LIMIT = Decimal("1000000000")  # a budget set, never reached


@cache
def baseline() -> tuple[Any, Any]:
    """What a typical team writes: a model and a Celery task that looks at one row."""
    from django.db import connection, models

    from project.celery import app

    class Job(models.Model):
        meters = models.JSONField()
        status = models.CharField(max_length=20, default="submitted")
        created = models.DateTimeField(auto_now_add=True)

        class Meta:
            app_label = "bench"
            db_table = "bench_job"

        def __str__(self) -> str:
            return f"job {self.pk}"

    @app.task(name="bench.look_at_job", ignore_result=True)
    def look_at_job(pk: int) -> None:
        """Never runs: no worker is running while the baseline is measured."""

    with connection.schema_editor() as editor:
        editor.create_model(Job)
    return Job, look_at_job


def creation(bench: Bench, runs: int) -> dict[str, Any]:
    """Milliseconds per request_collection call in this process with no worker running,
    against Job.objects.create() + delay() on the same database and broker; runs alternate.
    Then the same call with a daily and a monthly budget set (none ever reached): the
    admission's lock and read of the days' totals."""
    from django.test import override_settings

    from collections_app import services

    job, task = baseline()
    n, results = bench.counts["creation"], []
    bench.stop_worker()
    budgets = override_settings(
        COLLECTIONS_DAILY_BUDGET=NO_LIMIT, COLLECTIONS_MONTHLY_BUDGET=NO_LIMIT
    )

    def typical(i: int, prefix: str) -> None:
        task.delay(job.objects.create(meters=[f"{prefix}-{i}"]).pk)

    def ours(i: int, prefix: str) -> None:
        services.request_collection([f"{prefix}-{i}"], source="cli")

    for r in range(runs):
        bench.reset(idle=False)
        one = {"baseline_ms": _per_call(typical, n, f"b{r}"), "ms": _per_call(ours, n, f"c{r}")}
        with budgets:
            one["budget_ms"] = _per_call(ours, n, f"d{r}")
        results.append({**one, "ratio": one["ms"] / one["baseline_ms"], "requests": n})
    state.flush_redis(bench.target)  # the messages no worker will read
    return result({"worker": "none"}, results)


def _per_call(call: Any, n: int, prefix: str) -> float:
    call(-1, prefix)  # warm-up
    start = time.perf_counter()
    for i in range(n):
        call(i, prefix)
    return (time.perf_counter() - start) * 1000 / n


def api_ingest(bench: Bench) -> dict[str, Any]:
    """16 keep-alive clients against the Procfile's web server while a worker drains: GET
    /healthz, then POST /api/collections/ (one meter each), the same number of calls."""
    n = bench.counts["ingest"]
    bench.sandbox.configure(RATE, LATENCY_MS)
    bench.reset()
    web = Web(bench.env({}))  # it starts while the token is made and the worker starts
    try:
        token = _api_token(bench)
        with bench.worker({}):
            web.wait_ready()
            health = _hammer(n, lambda s, i: s.get(web.url + "/healthz", timeout=30))
            cpu0 = web.cpu_seconds()
            post = _hammer(n, lambda s, i: _post(s, web.url, token, i))
            post["cpu_ms_per_request"] = (web.cpu_seconds() - cpu0) * 1000 / n
            left = state.queued_messages(bench.target)
    finally:
        web.stop()
    return {
        "settings": {"web": web.command, "clients": CLIENTS, "calls": n, "sandbox": "50/s"},
        "healthz": health,
        "post": post,
        "ratio": post["rps"] / health["rps"],
        "accepted": post["by_status"].get(202, 0) / n,
        "messages_left": left,
    }


def _post(session: requests.Session, url: str, token: str, i: int) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    body = {"meters": [f"api-{time.time()}-{i}"]}
    return session.post(url + API_PATH, json=body, headers=headers, timeout=30)


def _hammer(n: int, call: Any) -> dict[str, Any]:
    """`n` calls shared by CLIENTS threads, each with its own keep-alive session."""
    lock, latencies, codes = threading.Lock(), list[float](), Counter[int]()

    def client(k: int) -> None:
        session = requests.Session()
        for i in range(k, n, CLIENTS):
            start = time.perf_counter()
            status = call(session, i).status_code
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)
                codes[status] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    latencies.sort()
    return {
        "rps": n / (time.perf_counter() - start),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "by_status": dict(codes),
    }


def _api_token(bench: Bench) -> str:
    """A superuser's token, from `manage.py create_api_token` (printed alone on the last line)."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    if not user_model.objects.filter(username=USER).exists():
        user_model.objects.create_superuser(USER, f"{USER}@example.com", None)
    return state.manage(bench.target, "create_api_token", USER).strip().splitlines()[-1].strip()


def frozen_broker(bench: Bench) -> dict[str, Any]:
    """Redis SIGSTOPped while request_collection stores a request, with a worker running: how
    long the call is held (Redis resumes after counts["frozen_cap_s"] at most); after SIGCONT
    (and the sweep, as beat runs it), how many calls carried the request."""
    from collections_app import services
    from collections_app.models import CollectionRequest

    bench.sandbox.configure(0, 0)
    bench.reset()
    meter, done, cap = f"frozen-{time.time()}", threading.Event(), bench.counts["frozen_cap_s"]
    with bench.worker({}):
        bench.redis.freeze()
        try:
            start = time.perf_counter()
            call = threading.Thread(target=lambda: _store(services, meter, done), daemon=True)
            call.start()
            call.join(cap)
            blocked = time.perf_counter() - start
        finally:
            bench.redis.thaw()
        wait_until(done.is_set, 60, "the call held by the frozen broker")
        returned = time.perf_counter() - start
        rows = CollectionRequest.objects.filter(meters__contains=[meter])
        wait_until(lambda: _swept_until_sent(services, rows), 60, "the request sent", every=0.2)
        time.sleep(0.5)  # room for a duplicate to show up in the sandbox's log
    bench.stop_worker()  # it lived through the freeze: later scenarios get a fresh one
    calls = [c for c in call_log(bench)["log"] if meter in (c.get("meters") or [])]
    return {
        "blocked_s": blocked,
        "capped": blocked >= cap,
        "returned_s": returned,
        "calls_with_the_request": len(calls),
        "status": rows.get().status,
    }


def _store(services: Any, meter: str, done: threading.Event) -> None:
    try:
        services.request_collection([meter], source="cli")
    finally:
        done.set()


def _swept_until_sent(services: Any, rows: Any) -> bool:
    if rows.exclude(status="submitted").exists():
        return True
    services.sweep()
    return False
