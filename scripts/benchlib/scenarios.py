"""The drain scenarios: at the rate limit (coalescing off), overhead against a bare requests
loop, a throttle storm, the backlog drain, and coalescing with the defaults. Each returns
{"settings", "runs", "summary"}: every run's figures and their medians."""

from __future__ import annotations

import statistics
import time
from typing import Any

from . import run, state
from .rig import label, wait_until
from .run import (
    COALESCING_OFF,
    LATENCY_MS,
    RATE,
    UNLIMITED,
    Bench,
    Pool,
    call_log,
    drain,
    one_meter_groups,
    result,
)

LIMITED = {"UTILITYAPI_RATE_LIMIT": RATE}
SANDBOX = f"{RATE}/s, {LATENCY_MS} ms"


def rate_limited(bench: Bench, pool: Pool, runs: int) -> dict[str, Any]:
    """One-meter requests at once, coalescing off, against the sandbox's 50/s with 50 ms."""
    n, overrides, results = bench.counts["rate"], {**COALESCING_OFF, **LIMITED}, []
    bench.sandbox.configure(RATE, LATENCY_MS)
    with bench.worker(overrides, pool) as fleet:
        for i in range(runs):
            bench.reset()
            one = drain(bench, fleet, one_meter_groups(n, f"rate{i}"), timeout=60 + 3 * n / RATE)
            results.append({**one, **call_log(bench), "rate_ratio": one["rps"] / RATE})
        rss = fleet.rss_mb()
    settings = {"pool": label(*pool), **overrides, "sandbox": SANDBOX}
    return result(settings, results, ideal_s=n / RATE, rss_mb=rss)


def overhead(bench: Bench, pool: Pool, runs: int, coalescing: bool = False) -> dict[str, Any]:
    """End-to-end requests/s against a bare requests.Session loop, sandbox unlimited, at
    50 ms and at 0 ms latency (with the worker's CPU per request)."""
    overrides = {"UTILITYAPI_RATE_LIMIT": UNLIMITED, **({} if coalescing else COALESCING_OFF)}
    out: dict[str, Any] = {"settings": {"pool": label(*pool), **overrides}}
    with bench.worker(overrides, pool) as fleet:
        for latency in (50, 0):
            bench.sandbox.configure(0, latency)
            out[f"{latency}ms"] = _overhead_at(bench, fleet, pool[1] * pool[2], runs, latency)
        out["rss_mb"] = fleet.rss_mb()
    return out


def _overhead_at(bench: Bench, fleet: Any, concurrency: int, runs: int, latency: int) -> dict:
    n, results = bench.counts["overhead"], []
    for i in range(runs):
        bench.reset()
        bare = run.bare_loop(bench.sandbox.url, n, concurrency)
        bench.reset()
        one = drain(bench, fleet, one_meter_groups(n, f"o{latency}-{i}"), timeout=120)
        results.append({**one, **call_log(bench), "bare_rps": bare["rps"]})
        results[-1]["ratio"] = one["rps"] / bare["rps"]
    return result({"sandbox": f"unlimited, {latency} ms"}, results)


def throttle_storm(bench: Bench, runs: int) -> dict[str, Any]:
    """A burst whose first call is answered 429 + Retry-After 5, coalescing off."""
    n, overrides, results = bench.counts["storm"], {**COALESCING_OFF, **LIMITED}, []
    bench.sandbox.configure(RATE, LATENCY_MS)
    retry_after = bench.counts["retry_after"]
    throttle = {"status": 429, "headers": {"Retry-After": str(retry_after)}}
    with bench.worker(overrides) as fleet:
        for i in range(runs):
            bench.reset()
            bench.sandbox.control("script", {"responses": [throttle]})
            one = drain(bench, fleet, one_meter_groups(n, f"storm{i}"), timeout=120 + n / RATE)
            results.append(_storm_figures({**one, **call_log(bench)}, retry_after, n))
    return result({"pool": label(*bench.pool), **overrides, "sandbox": SANDBOX}, results)


def _storm_figures(one: dict[str, Any], retry_after: int, n: int) -> dict[str, Any]:
    ideal_s = retry_after + n / RATE
    answered = next(c for c in one["log"] if c.get("status") == 429)["answered"]
    one["calls_in_pause"] = sum(answered <= c["at"] < answered + retry_after for c in one["log"])
    one["drain_after_429_s"] = one["drain_s"] - (answered - one["t0"])
    return one | {"ideal_after_429_s": ideal_s, "vs_ideal": one["drain_after_429_s"] / ideal_s}


def backlog(bench: Bench, runs: int) -> dict[str, Any]:
    """One-meter requests queued with no worker running, then one worker drains them (the
    defaults: coalescing on). Timed from the moment the worker is ready."""
    n, results = bench.counts["backlog"], []
    bench.sandbox.configure(RATE, LATENCY_MS)
    for i in range(runs):
        bench.stop_worker()
        bench.reset()
        run.queue(one_meter_groups(n, f"backlog{i}"))
        created = state.queued_messages(bench.target)
        with bench.worker({}):
            one = run.wait_drained(bench, time.time(), n, timeout=60 + 3 * n / RATE)
        results.append({**one, **call_log(bench), "messages_created": created})
        results[-1]["limit_ratio"] = one["rps"] / RATE
    return result({"pool": label(*bench.pool), **_defaults(), "sandbox": SANDBOX}, results)


def _defaults() -> dict[str, Any]:
    from django.conf import settings

    names = [
        "UTILITYAPI_RATE_LIMIT",
        "COLLECTIONS_BATCH_MAX_METERS",
        "COLLECTIONS_COALESCE_WINDOW_MS",
    ]
    return {name: getattr(settings, name) for name in names}


def coalescing(bench: Bench, runs: int, uncoalesced_rps: float) -> dict:
    """The defaults (coalescing on): a burst, the bulk trigger, a lone request's wait, and
    requests created one by one."""
    bench.sandbox.configure(RATE, LATENCY_MS)
    with bench.worker({}) as fleet:
        burst = _burst(bench, fleet, runs, uncoalesced_rps)
        bulk = _bulk_trigger(bench, fleet, runs)
        lone = _per_window(lambda: statistics.median(_lone(i) for i in range(bench.counts["lone"])))
        stream = _per_window(lambda: _stream(bench, bench.counts["stream"]))
    return {
        "settings": {"pool": label(*bench.pool), **_defaults()},
        "burst": burst,
        "bulk": bulk,
        "lone": lone,
        "stream": stream,
    }


def _burst(bench: Bench, fleet: Any, runs: int, uncoalesced_rps: float) -> dict[str, Any]:
    n, results = bench.counts["burst"], []
    for i in range(runs):
        bench.reset()
        one = drain(bench, fleet, one_meter_groups(n, f"co{i}"), timeout=300)
        results.append({**one, **call_log(bench)})
    out = result({"sandbox": SANDBOX}, results)
    out["summary"]["vs_uncoalesced"] = (
        out["summary"]["rps"] / uncoalesced_rps if uncoalesced_rps else None
    )
    return out


def _bulk_trigger(bench: Bench, fleet: Any, runs: int) -> dict[str, Any]:
    """The sandbox's registry meters in groups of COLLECTIONS_MAX_METERS_PER_REQUEST."""
    from django.conf import settings

    size, n = settings.COLLECTIONS_MAX_METERS_PER_REQUEST, bench.counts["bulk"]
    meters = [str(100000 + i) for i in range(n)]  # the sandbox's registry (10% revoked/expired)
    groups, results = [meters[i : i + size] for i in range(0, n, size)], []
    for _ in range(runs):
        bench.reset()
        results.append({**drain(bench, fleet, groups, timeout=300), **call_log(bench)})
    return result({"group_size": size}, results)


def _per_window(measure: Any) -> dict[str, Any]:
    """`measure()` with the default coalescing window and without one."""
    from django.conf import settings
    from django.test import override_settings

    out = {}
    for window in sorted({0, settings.COLLECTIONS_COALESCE_WINDOW_MS}):
        with override_settings(COLLECTIONS_COALESCE_WINDOW_MS=window):
            out[f"{window} ms"] = measure()
    return out


def _stream(bench: Bench, n: int) -> dict[str, Any]:
    """Requests created one by one, as fast as one API client can (a transaction each)."""
    from collections_app import services

    bench.reset()
    start = time.time()
    for i in range(n):
        services.request_collection([f"s{start}-{i}"], source="api")
    created = time.time() - start
    one = {**run.wait_drained(bench, start, n), **call_log(bench)}
    return {"requests": n, "create_s": created, "calls": one["calls"], "drain_s": one["drain_s"]}


def _lone(i: int) -> float:
    """Milliseconds from creation to the stored outcome of one request sent alone."""
    from collections_app import services
    from collections_app.models import CollectionRequest

    request = services.request_collection([f"lone-{time.time()}-{i}"], source="cli")
    rows = CollectionRequest.objects.filter(pk=request.pk).exclude(status="submitted")
    row = wait_until(rows.first, 30, "a lone request", every=0.005)
    return (row.updated - row.created).total_seconds() * 1000
