"""What every scenario uses: the benchmark's context, a worker with given settings, one drain
run (create requests at once, wait until none is `submitted`), and the sandbox's call log."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from . import state
from .procs import TOKEN, Fleet, Sandbox, wait_until

COALESCING_OFF = {"COLLECTIONS_BATCH_MAX_METERS": 1}
Pool = tuple[str, int, int]  # Celery pool, its concurrency, worker processes
UNLIMITED = 1_000_000  # UTILITYAPI_RATE_LIMIT for the overhead scenario: the gate never waits


@dataclass
class Bench:
    """The benchmark's context: where its state lives, its sandbox, and the run counts."""

    target: state.Target
    sandbox: Sandbox
    runs: int
    quick: bool
    counts: dict[str, int]
    memory: dict[str, float] = field(default_factory=dict)  # worker label → peak RSS (MB)

    def env(self, overrides: dict[str, Any]) -> dict[str, str]:
        env = state.base_env(self.target, self.sandbox.url)
        env.update({name: str(value) for name, value in overrides.items()})
        return env

    @contextmanager
    def worker(self, pool: Pool, overrides: dict[str, Any]) -> Iterator[Fleet]:
        """Fresh workers (on a flushed Redis db) whose settings the driver shares meanwhile."""
        from django.test import override_settings

        state.flush_redis(self.target)
        fleet = Fleet(self.env(overrides), *pool)
        try:
            with override_settings(**overrides):
                yield fleet
            rss = fleet.peak_rss_mb()
            self.memory[fleet.label] = max(rss, self.memory.get(fleet.label, 0.0))
        finally:
            fleet.stop()

    def reset(self) -> None:
        """Between runs: empty tables, gate keys and the sandbox's log (keeping its config)."""
        state.wait_idle(self.target)
        state.truncate()
        state.clear_gate(self.target)
        self.sandbox.control("reset")


def drain(bench: Bench, fleet: Fleet, groups: list[list[str]], timeout: float) -> dict[str, Any]:
    """Create the requests at once (as a bulk trigger does) and wait until none is submitted.

    Times come from the rows (`updated` is written by the worker with the outcome), so the
    polling interval does not blur them."""
    from collections_app import services

    cpu0, start = fleet.cpu_seconds(), time.time()
    services.request_collections(groups, source="cli")
    created = time.time()
    one = wait_drained(bench, fleet, start, len(groups), timeout)
    one["worker_cpu_ms_per_request"] = (fleet.cpu_seconds() - cpu0) * 1000 / len(groups)
    return {**one, "meters": sum(len(g) for g in groups), "create_s": created - start}


def wait_drained(
    bench: Bench, fleet: Fleet, start: float, n: int, timeout: float = 120
) -> dict[str, Any]:
    """Wait until no request is submitted, then until the broker is idle; times from `start`."""
    wait_until(lambda: not _submitted(), timeout, f"{n} requests to leave submitted")
    finished = _last_update()
    idle = state.wait_idle(bench.target) + time.time()
    statuses = _status_counts()
    return {
        "requests": n,
        "drain_s": finished - start,
        "idle_s": idle - start,
        "rps": n / (finished - start),
        "pending": statuses.get("pending", 0),
        "failed": statuses.get("failed", 0),
        "t0": start,
    }


def _submitted() -> bool:
    from collections_app.models import CollectionRequest

    return CollectionRequest.objects.filter(status="submitted").exists()


def _last_update() -> float:
    from django.db.models import Max

    from collections_app.models import CollectionRequest

    return CollectionRequest.objects.aggregate(last=Max("updated"))["last"].timestamp()


def _status_counts() -> dict[str, int]:
    from collections_app.ops import figures

    counts = figures.status_counts()
    counts.pop("total")
    return {status: n for status, n in counts.items() if n}


def one_meter_groups(n: int, prefix: str) -> list[list[str]]:
    return [[f"{prefix}-{i}"] for i in range(n)]


def call_log(bench: Bench) -> dict[str, Any]:
    """The sandbox's view: calls, answers by status, early calls, the busiest second."""
    stats = bench.sandbox.stats()
    log = sorted(stats["log"], key=lambda c: c["at"])
    return {
        "calls": stats["calls"],
        "by_status": stats["by_status"],
        "status_429": stats["by_status"].get("429", 0),
        "early_calls": stats["early_calls"],
        "meters_sent": stats["meters_sent"],
        "busiest_second": busiest_second([c["at"] for c in log]),
        "log": log,
    }


def busiest_second(times: list[float]) -> int:
    """The most calls that arrived within any one-second window (the vendor's view)."""
    best, left = 0, 0
    for right, at in enumerate(times):
        while at - times[left] >= 1.0:
            left += 1
        best = max(best, right - left + 1)
    return best


def bare_loop(url: str, n: int, concurrency: int) -> dict[str, Any]:
    """The floor: `n` POSTs from `concurrency` threads, each with its own requests.Session."""
    shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        codes = sum(pool.map(lambda k: _post_many(url, k[0], k[1]), enumerate(shares)), Counter())
    elapsed = time.perf_counter() - start
    return {"requests": n, "seconds": elapsed, "rps": n / elapsed, "by_status": dict(codes)}


def _post_many(url: str, thread: int, count: int) -> Counter[int]:
    session, codes = requests.Session(), Counter[int]()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    for i in range(count):
        body = {"meters": [f"bare-{thread}-{i}"]}
        answer = session.post(url + "/meters/historical-collection", json=body, timeout=30)
        codes[answer.status_code] += 1
    return codes


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))
