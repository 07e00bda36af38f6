"""What every scenario uses: the benchmark's context, workers with given settings, one drain
(requests created at once, then waited for until none is `submitted`), and the sandbox's log."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests

from . import state
from .rig import TOKEN, Fleet, RedisServer, Sandbox, wait_until

COALESCING_OFF = {"COLLECTIONS_BATCH_MAX_METERS": 1}
Pool = tuple[str, int, int]  # Celery pool, its concurrency, worker processes
RATE, LATENCY_MS = 50, 50  # the vendor's limit and answer time in the sandbox
UNLIMITED = 1_000_000  # UTILITYAPI_RATE_LIMIT when the gate must never wait


@dataclass
class Bench:
    """The benchmark's context: where its state lives, its processes, and the run counts."""

    target: state.Target
    redis: RedisServer
    sandbox: Sandbox
    pool: Pool
    runs: int
    counts: dict[str, int]
    fleet: Fleet | None = None
    fleet_key: tuple[Any, ...] = ()

    def env(self, overrides: dict[str, Any]) -> dict[str, str]:
        env = state.base_env(self.target, self.sandbox.url)
        return env | {name: str(value) for name, value in overrides.items()}

    @contextmanager
    def worker(self, overrides: dict[str, Any], pool: Pool | None = None) -> Iterator[Fleet]:
        """Workers with these settings, which the driver shares meanwhile: those of the last
        scenario when it asked for the same, else fresh ones (a start costs seconds)."""
        from django.test import override_settings

        pool = pool or self.pool
        key = (*sorted(overrides.items()), pool)
        if self.fleet is None or self.fleet_key != key:
            self.stop_worker()
            self.fleet, self.fleet_key = Fleet(self.env(overrides), *pool), key
        with override_settings(**overrides):
            yield self.fleet

    def stop_worker(self) -> None:
        if self.fleet:
            self.fleet.stop()
        self.fleet = None

    def reset(self, idle: bool = True) -> None:
        """Between runs: empty tables, the service's Redis keys and the sandbox's log."""
        if idle:
            state.wait_idle(self.target)
        state.truncate()
        state.flush_app_keys(self.target)
        self.sandbox.control("reset")


def queue(groups: list[list[str]]) -> None:
    """Store the requests at once, as a bulk trigger does."""
    from collections_app import services

    services.request_collections(groups, source="cli")


def drain(bench: Bench, fleet: Fleet, groups: list[list[str]], timeout: float) -> dict[str, Any]:
    """Create the requests at once and wait until none is submitted (times from the rows:
    `updated` is written with the outcome, so the polling interval does not blur them)."""
    cpu0, start = fleet.cpu_seconds(), time.time()
    queue(groups)
    created = time.time()
    one = wait_drained(bench, start, len(groups), timeout)
    one["worker_cpu_ms_per_request"] = (fleet.cpu_seconds() - cpu0) * 1000 / len(groups)
    return {**one, "meters": sum(len(g) for g in groups), "create_s": created - start}


def wait_drained(bench: Bench, start: float, n: int, timeout: float = 120) -> dict[str, Any]:
    """Wait until no request is submitted, then until the broker is idle; times from `start`."""
    from django.db.models import Count, Max

    from collections_app.models import CollectionRequest

    rows = CollectionRequest.objects
    wait_until(lambda: not rows.filter(status="submitted").exists(), timeout, f"{n} requests")
    left = state.queued_messages(bench.target, waiting_only=True)
    held = state.queued_messages(bench.target) - left
    finished = rows.aggregate(last=Max("updated"))["last"].timestamp()
    idle = state.wait_idle(bench.target) + time.time()
    statuses = dict(rows.values_list("status").annotate(n=Count("pk")))
    return {
        "requests": n,
        "drain_s": finished - start,
        "idle_s": idle - start,
        "rps": n / (finished - start),
        "messages_left": left,
        "messages_held": held,
        "pending": statuses.get("pending", 0),
        "failed": statuses.get("failed", 0),
        "t0": start,
    }


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
        codes = sum(pool.map(lambda k: _post_many(url, *k), enumerate(shares)), Counter())
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


WORST = {"status_429", "early_calls", "busiest_second", "calls_in_pause"}  # max, not median


def result(settings: dict[str, Any], runs: list[dict[str, Any]], **extra: Any) -> dict:
    """A scenario's figures: its settings, every run (without the call log), and a summary:
    the median of every number over the runs (the worst for the counts of WORST)."""
    for one in runs:
        one.pop("log", None)
        one.pop("t0", None)
    numbers = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    summary = {k: (max if k in WORST else statistics.median)(r[k] for r in runs) for k in numbers}
    return {"settings": settings, "runs": runs, "summary": summary | extra}
