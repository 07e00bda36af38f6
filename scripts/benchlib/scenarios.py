"""The scenarios of the "Performance" issue. Each returns {"settings", "runs", "summary"}:
every run's figures and their medians (the machine may be shared: compare within one run)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from . import run
from .run import COALESCING_OFF, UNLIMITED, Bench, call_log, drain, median_of, one_meter_groups

RATE, LATENCY_MS = 50, 50
ALLOWED_RATE = RATE  # the vendor's limit the drain is compared with (ideal: n / RATE seconds)


def _result(settings: dict[str, Any], runs: list[dict[str, Any]], **summary: Any) -> dict:
    for one in runs:
        one.pop("log", None)
        one.pop("t0", None)
    return {"settings": settings, "runs": runs, "summary": summary}


# --- 1. at the rate limit -----------------------------------------------------------------


def rate_limited(bench: Bench, pool: str, concurrency: int, runs: int) -> dict[str, Any]:
    """3,000 one-meter requests at once, coalescing off, sandbox limit 50/s with 50 ms."""
    n = bench.counts["rate"]
    overrides = {**COALESCING_OFF, "UTILITYAPI_RATE_LIMIT": RATE}
    bench.sandbox.configure(RATE, LATENCY_MS)
    results = []
    with bench.worker(pool, concurrency, overrides) as worker:
        for i in range(runs):
            bench.reset()
            one = drain(bench, worker, one_meter_groups(n, f"rate{i}"), timeout=60 + 3 * n / RATE)
            results.append({**one, **call_log(bench)})
    for one in results:
        one["ideal_s"] = n / ALLOWED_RATE
        one["rate_ratio"] = one["rps"] / ALLOWED_RATE
    return _result(
        {"pool": f"{pool} × {concurrency}", **overrides, "sandbox": f"{RATE}/s, {LATENCY_MS} ms"},
        results,
        requests=n,
        drain_s=median_of(results, "drain_s"),
        ideal_s=n / ALLOWED_RATE,
        rps=median_of(results, "rps"),
        rate_ratio=median_of(results, "rate_ratio"),
        status_429=max(r["status_429"] for r in results),
        early_calls=max(r["early_calls"] for r in results),
        busiest_second=max(r["busiest_second"] for r in results),
        worker_cpu_ms_per_request=median_of(results, "worker_cpu_ms_per_request"),
    )


# --- 2. overhead against a bare requests loop -----------------------------------------------


def overhead(bench: Bench, pool: str, concurrency: int, runs: int) -> dict[str, Any]:
    """End-to-end requests/s against a bare requests.Session loop, sandbox unlimited, at
    50 ms and at 0 ms latency; at 0 ms also CPU per request in the worker and the web side."""
    overrides = {**COALESCING_OFF, "UTILITYAPI_RATE_LIMIT": UNLIMITED}
    out: dict[str, Any] = {"settings": {"pool": f"{pool} × {concurrency}", **overrides}}
    with bench.worker(pool, concurrency, overrides) as worker:
        for latency in (50, 0):
            bench.sandbox.configure(0, latency)
            out[f"{latency}ms"] = _overhead_at(bench, worker, concurrency, runs, latency)
        out["web"] = web_cost(bench, bench.counts["web"])
    return out


def _overhead_at(bench: Bench, worker: Any, concurrency: int, runs: int, latency: int) -> dict:
    n = bench.counts["overhead"]
    results = []
    for i in range(runs):
        bench.reset()
        bare = run.bare_loop(bench.sandbox.url, n, concurrency)
        bench.reset()
        one = drain(bench, worker, one_meter_groups(n, f"o{latency}-{i}"), timeout=120)
        one.update(call_log(bench), bare_rps=bare["rps"], ratio=one["rps"] / bare["rps"])
        results.append(one)
    return _result(
        {"sandbox": f"unlimited, {latency} ms"},
        results,
        requests=n,
        rps=median_of(results, "rps"),
        bare_rps=median_of(results, "bare_rps"),
        ratio=median_of(results, "ratio"),
        worker_cpu_ms_per_request=median_of(results, "worker_cpu_ms_per_request"),
    )


def web_cost(bench: Bench, n: int) -> dict[str, Any]:
    """CPU per created request on the web side: POST /api/collections/ through gunicorn when
    the JSON API is there, else services.request_collection in this process."""
    from . import web

    bench.reset()
    return web.measure(bench, n)


# --- 3. throttle storm ----------------------------------------------------------------------

RETRY_AFTER = 5


def throttle_storm(bench: Bench, pool: str, concurrency: int, runs: int) -> dict[str, Any]:
    """A 1,000-request burst whose first call is answered 429 + Retry-After 5."""
    n = bench.counts["storm"]
    overrides = {**COALESCING_OFF, "UTILITYAPI_RATE_LIMIT": RATE}
    bench.sandbox.configure(RATE, LATENCY_MS)
    results = []
    with bench.worker(pool, concurrency, overrides) as worker:
        for i in range(runs):
            bench.reset()
            throttle = {"status": 429, "headers": {"Retry-After": str(RETRY_AFTER)}}
            bench.sandbox.control("script", {"responses": [throttle]})
            one = drain(bench, worker, one_meter_groups(n, f"storm{i}"), timeout=120 + n / RATE)
            results.append(_storm_figures({**one, **call_log(bench)}, n))
    return _result(
        {"pool": f"{pool} × {concurrency}", **overrides, "sandbox": f"{RATE}/s, {LATENCY_MS} ms"},
        results,
        requests=n,
        calls_in_pause=max(r["calls_in_pause"] for r in results),
        early_calls=max(r["early_calls"] for r in results),
        status_429=max(r["status_429"] for r in results),
        drain_after_429_s=median_of(results, "drain_after_429_s"),
        ideal_after_429_s=RETRY_AFTER + n / ALLOWED_RATE,
    )


def _storm_figures(one: dict[str, Any], n: int) -> dict[str, Any]:
    throttled = next(c for c in one["log"] if c.get("status") == 429)
    answered = throttled["answered"]
    in_pause = [c for c in one["log"] if answered <= c["at"] < answered + RETRY_AFTER]
    one["calls_in_pause"] = len(in_pause)
    one["drain_after_429_s"] = one["drain_s"] - (answered - one["t0"])
    return one


# --- 4. bulk trigger, 6. coalescing -----------------------------------------------------------


def coalescing(bench: Bench, pool: str, concurrency: int, runs: int, s1_rps: float) -> dict:
    """Defaults (coalescing on): scenario 1's burst, the bulk trigger, a lone request's wait."""
    bench.sandbox.configure(RATE, LATENCY_MS)
    overrides = {"UTILITYAPI_RATE_LIMIT": RATE}
    with bench.worker(pool, concurrency, overrides) as worker:
        burst = _coalesced_burst(bench, worker, runs, s1_rps)
        bulk = _bulk_trigger(bench, worker, runs)
        lone = _lone_latency(bench, bench.counts["lone"])
    settings = {"pool": f"{pool} × {concurrency}", **overrides, **_coalescing_settings()}
    return {"settings": settings, "burst": burst, "bulk": bulk, "lone": lone}


def _coalescing_settings() -> dict[str, Any]:
    from django.conf import settings

    names = ["COLLECTIONS_BATCH_MAX_METERS", "COLLECTIONS_COALESCE_WINDOW_MS"]
    return {name: getattr(settings, name) for name in names}


def _coalesced_burst(bench: Bench, worker: Any, runs: int, s1_rps: float) -> dict[str, Any]:
    n, results = bench.counts["rate"], []
    for i in range(runs):
        bench.reset()
        one = drain(bench, worker, one_meter_groups(n, f"co{i}"), timeout=300)
        results.append({**one, **call_log(bench)})
    return _result(
        {"sandbox": f"{RATE}/s, {LATENCY_MS} ms"},
        results,
        requests=n,
        calls=median_of(results, "calls"),
        drain_s=median_of(results, "drain_s"),
        idle_s=median_of(results, "idle_s"),
        rps=median_of(results, "rps"),
        vs_uncoalesced=median_of(results, "rps") / s1_rps if s1_rps else None,
        worker_cpu_ms_per_request=median_of(results, "worker_cpu_ms_per_request"),
    )


def _bulk_trigger(bench: Bench, worker: Any, runs: int) -> dict[str, Any]:
    """10,000 registry meters in groups of COLLECTIONS_MAX_METERS_PER_REQUEST."""
    from django.conf import settings

    size, n = settings.COLLECTIONS_MAX_METERS_PER_REQUEST, bench.counts["bulk"]
    meters = [str(100000 + i) for i in range(n)]  # the sandbox's registry (10% revoked/expired)
    groups = [meters[i : i + size] for i in range(0, n, size)]
    results = []
    for _ in range(runs):
        bench.reset()
        results.append({**drain(bench, worker, groups, timeout=300), **call_log(bench)})
    return _result(
        {"group_size": size},
        results,
        meters=n,
        requests=len(groups),
        calls=median_of(results, "calls"),
        drain_s=median_of(results, "drain_s"),
    )


def _lone_latency(bench: Bench, samples: int) -> dict[str, Any]:
    """created → pending of a lone request, with the default window and without one."""
    from django.conf import settings
    from django.test import override_settings

    out = {}
    for window in sorted({0, settings.COLLECTIONS_COALESCE_WINDOW_MS}):
        with override_settings(COLLECTIONS_COALESCE_WINDOW_MS=window):
            bench.reset()
            out[f"window_{window}ms"] = statistics.median(_lone(i) for i in range(samples))
    return out


def _lone(i: int) -> float:
    """Milliseconds from creation to the stored outcome of one request sent alone."""
    from collections_app import services
    from collections_app.models import CollectionRequest

    from .procs import wait_until

    request = services.request_collection([f"lone-{i}"], source="cli")
    rows = CollectionRequest.objects.filter(pk=request.pk).exclude(status="submitted")
    row = wait_until(rows.first, 30, "a lone request", every=0.005)
    time.sleep(0.05)
    return (row.updated - row.created).total_seconds() * 1000
