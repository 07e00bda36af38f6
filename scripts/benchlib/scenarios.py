"""The scenarios of the "Performance" issue. Each returns {"settings", "runs", "summary"}:
every run's figures and their medians (the machine may be shared: compare within one run)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from . import run
from .procs import label
from .run import (
    COALESCING_OFF,
    UNLIMITED,
    Bench,
    Pool,
    call_log,
    drain,
    median_of,
    one_meter_groups,
)

RATE, LATENCY_MS = 50, 50
ALLOWED_RATE = RATE  # the vendor's limit the drain is compared with (ideal: n / RATE seconds)


def _result(settings: dict[str, Any], runs: list[dict[str, Any]], **summary: Any) -> dict:
    for one in runs:
        one.pop("log", None)
        one.pop("t0", None)
    return {"settings": settings, "runs": runs, "summary": summary}


# --- 1. at the rate limit -----------------------------------------------------------------


def rate_limited(bench: Bench, pool: Pool, runs: int) -> dict[str, Any]:
    """3,000 one-meter requests at once, coalescing off, sandbox limit 50/s with 50 ms."""
    n = bench.counts["rate"]
    overrides = {**COALESCING_OFF, "UTILITYAPI_RATE_LIMIT": RATE}
    bench.sandbox.configure(RATE, LATENCY_MS)
    results = []
    with bench.worker(pool, overrides) as fleet:
        for i in range(runs):
            bench.reset()
            one = drain(bench, fleet, one_meter_groups(n, f"rate{i}"), timeout=60 + 3 * n / RATE)
            results.append({**one, **call_log(bench)})
    for one in results:
        one["ideal_s"] = n / ALLOWED_RATE
        one["rate_ratio"] = one["rps"] / ALLOWED_RATE
    return _result(
        {"pool": label(*pool), **overrides, "sandbox": f"{RATE}/s, {LATENCY_MS} ms"},
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


def overhead(bench: Bench, pool: Pool, runs: int, coalescing: bool = False) -> dict[str, Any]:
    """End-to-end requests/s against a bare requests.Session loop, sandbox unlimited, at
    50 ms and at 0 ms latency (with the CPU per request in the worker)."""
    overrides = {"UTILITYAPI_RATE_LIMIT": UNLIMITED, **({} if coalescing else COALESCING_OFF)}
    out: dict[str, Any] = {"settings": {"pool": label(*pool), **overrides}}
    with bench.worker(pool, overrides) as fleet:
        for latency in (50, 0):
            bench.sandbox.configure(0, latency)
            out[f"{latency}ms"] = _overhead_at(bench, fleet, pool[1] * pool[2], runs, latency)
    return out


def _overhead_at(bench: Bench, fleet: Any, concurrency: int, runs: int, latency: int) -> dict:
    n = bench.counts["overhead"]
    results = []
    for i in range(runs):
        bench.reset()
        bare = run.bare_loop(bench.sandbox.url, n, concurrency)
        bench.reset()
        one = drain(bench, fleet, one_meter_groups(n, f"o{latency}-{i}"), timeout=120)
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


def web_cost(bench: Bench, pool: Pool) -> dict[str, Any]:
    """CPU per created request on the web side: POST /api/collections/ through gunicorn when
    the JSON API is there, else services.request_collection in this process (a worker runs
    meanwhile, so that the requests are sent as they would be)."""
    from . import web

    bench.sandbox.configure(0, 0)
    with bench.worker(pool, {"UTILITYAPI_RATE_LIMIT": UNLIMITED}):
        bench.reset()
        return web.measure(bench, bench.counts["web"])


# --- 3. throttle storm ----------------------------------------------------------------------

RETRY_AFTER = 5


def throttle_storm(bench: Bench, pool: Pool, runs: int) -> dict[str, Any]:
    """A 1,000-request burst whose first call is answered 429 + Retry-After 5."""
    n = bench.counts["storm"]
    overrides = {**COALESCING_OFF, "UTILITYAPI_RATE_LIMIT": RATE}
    bench.sandbox.configure(RATE, LATENCY_MS)
    results = []
    with bench.worker(pool, overrides) as fleet:
        for i in range(runs):
            bench.reset()
            throttle = {"status": 429, "headers": {"Retry-After": str(RETRY_AFTER)}}
            bench.sandbox.control("script", {"responses": [throttle]})
            one = drain(bench, fleet, one_meter_groups(n, f"storm{i}"), timeout=120 + n / RATE)
            results.append(_storm_figures({**one, **call_log(bench)}, n))
    return _result(
        {"pool": label(*pool), **overrides, "sandbox": f"{RATE}/s, {LATENCY_MS} ms"},
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


def coalescing(bench: Bench, pool: Pool, runs: int, s1_rps: float) -> dict:
    """Defaults (coalescing on): scenario 1's burst, the bulk trigger, a lone request's wait."""
    bench.sandbox.configure(RATE, LATENCY_MS)
    overrides = {"UTILITYAPI_RATE_LIMIT": RATE}
    with bench.worker(pool, overrides) as fleet:
        burst = _coalesced_burst(bench, fleet, runs, s1_rps)
        bulk = _bulk_trigger(bench, fleet, runs)
        lone = _lone_latency(bench, bench.counts["lone"])
        stream = _streams(bench, fleet, bench.counts["stream"])
    settings = {"pool": label(*pool), **overrides, **_coalescing_settings()}
    return {"settings": settings, "burst": burst, "bulk": bulk, "lone": lone, "stream": stream}


def _coalescing_settings() -> dict[str, Any]:
    from django.conf import settings

    names = ["COLLECTIONS_BATCH_MAX_METERS", "COLLECTIONS_COALESCE_WINDOW_MS"]
    return {name: getattr(settings, name) for name in names}


def _coalesced_burst(bench: Bench, fleet: Any, runs: int, s1_rps: float) -> dict[str, Any]:
    n, results = bench.counts["rate"], []
    for i in range(runs):
        bench.reset()
        one = drain(bench, fleet, one_meter_groups(n, f"co{i}"), timeout=300)
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


def _bulk_trigger(bench: Bench, fleet: Any, runs: int) -> dict[str, Any]:
    """10,000 registry meters in groups of COLLECTIONS_MAX_METERS_PER_REQUEST."""
    from django.conf import settings

    size, n = settings.COLLECTIONS_MAX_METERS_PER_REQUEST, bench.counts["bulk"]
    meters = [str(100000 + i) for i in range(n)]  # the sandbox's registry (10% revoked/expired)
    groups = [meters[i : i + size] for i in range(0, n, size)]
    results = []
    for _ in range(runs):
        bench.reset()
        results.append({**drain(bench, fleet, groups, timeout=300), **call_log(bench)})
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


def _streams(bench: Bench, fleet: Any, n: int) -> dict[str, Any]:
    """Requests created one by one, as fast as one API client can (a transaction each): how
    many calls they took, with the default window and without one."""
    from django.conf import settings
    from django.test import override_settings

    out = {}
    for window in sorted({0, settings.COLLECTIONS_COALESCE_WINDOW_MS}):
        with override_settings(COLLECTIONS_COALESCE_WINDOW_MS=window):
            out[f"window_{window}ms"] = _stream(bench, fleet, n, f"s{window}")
    return out


def _stream(bench: Bench, fleet: Any, n: int, prefix: str) -> dict[str, Any]:
    from collections_app import services

    bench.reset()
    start = time.time()
    for i in range(n):
        services.request_collection([f"{prefix}-{i}"], source="api")
    created = time.time() - start
    one = {**run.wait_drained(bench, fleet, start, n), **call_log(bench)}
    return {"requests": n, "create_s": created, "calls": one["calls"], "drain_s": one["drain_s"]}


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
