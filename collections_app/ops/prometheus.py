"""The dashboard's figures in Prometheus' text format, computed at scrape time.

A custom collector (https://prometheus.github.io/client_python/collector/custom/) reads the
same snapshot as /ops/ and /ops/metrics.json, so an alert rule and the page never disagree.
It lives in its own registry: no process metrics of one web worker among many.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .. import liveness
from ..gate import telemetry
from ..models import CollectionOutcome
from . import metrics

log = logging.getLogger(__name__)

PREFIX = "collections_"


def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    """One unlabelled gauge, left out when its value is unknown (a part is down)."""
    if value is not None:
        yield GaugeMetricFamily(PREFIX + name, doc, value=value)


def labelled(name: str, doc: str, label: str, values: dict[str, float]) -> Metric:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class OpsCollector:
    """Yields the snapshot's figures as gauges; a scrape costs one snapshot."""

    def collect(self) -> Iterable[Metric]:
        snap = metrics.snapshot()
        yield from machinery(snap)
        yield from throttling(snap["throttling"])
        yield from business(snap)
        levels = {level: 0.0 for level in (metrics.WARN, metrics.BAD)}
        for alert in snap["alerts"]:
            levels[alert["level"]] += 1
        yield labelled("alerts", "Dashboard alerts in force, by level.", "level", levels)
        yield from gauge(
            "snapshot_seconds", "Time taken to compute this snapshot.", snap["took_ms"] / 1000
        )


def machinery(snap: dict[str, Any]) -> Iterator[Metric]:
    m = snap["machinery"]
    up = {part: float(bool(m[part]["ok"])) for part in ("database", "redis", "workers", "sweep")}
    yield labelled("up", "1 when the part answers (sweep: ran recently).", "component", up)
    yield from gauge("workers", "Celery workers answering a ping.", m["workers"]["count"])
    yield from gauge(
        "broker_queue_length",
        "Messages waiting in the broker queue.",
        m["redis"].get("queue_length"),
    )
    yield from gauge(
        "broker_unacked",
        "Messages held by workers (running or waiting an ETA).",
        m["redis"].get("unacked"),
    )
    yield from gauge(
        "sweep_age_seconds", "Seconds since the periodic sweep last ran.", m["sweep"]["age_seconds"]
    )


def throttling(t: dict[str, Any]) -> Iterator[Metric]:
    yield from gauge("rate_limit_per_second", "Configured UtilityAPI rate limit.", t["rate_limit"])
    yield from gauge(
        "call_rate_per_second", "Measured POSTs per second (last minute).", t["call_rate"]
    )
    yield from gauge(
        "throttled_calls_last_hour", "POSTs answered 429 in the last hour.", t["calls_last_hour"]
    )
    if t["pauses"] is not None:
        left = {"throttle": 0.0, "account": 0.0}
        left.update({p["kind"]: p["seconds_left"] for p in t["pauses"]})
        yield labelled(
            "pause_seconds_left", "Seconds left on a fleet-wide pause (0: none).", "kind", left
        )


def business(snap: dict[str, Any]) -> Iterator[Metric]:
    if snap["status"] is None:  # the database did not answer
        return
    counts = {k: float(v) for k, v in snap["status"].items() if k != "total"}
    yield labelled("requests", "Collection requests by status now.", "status", counts)
    last_day = {
        event: float(sum(b[event] for b in snap["timeline"]["buckets"]))
        for event in ("created", "accepted", "failed")
    }
    yield labelled(
        "requests_last_24h",
        "Requests created/accepted/failed in the last 24 hours.",
        "event",
        last_day,
    )
    yield from retries(snap["retries"])
    yield from stalls(snap["stalls"])
    failed = {g["error"]: float(g["count"]) for g in snap["failures"]}
    yield labelled("failed_requests", "Failed requests by error type.", "error", failed)
    yield from tracking(snap["tracking"])
    yield from spending(snap["spending"])


def spending(s: dict[str, Any]) -> Iterator[Metric]:
    for kind in ("estimated", "expected"):
        values = {period: float(s[f"{period}_{kind}"]) for period in ("today", "month")}
        yield labelled(
            f"spend_{kind}_dollars",
            f"{kind.capitalize()} dollars let through, this UTC day and month.",
            "period",
            values,
        )
    limits = {name: float(b["limit"]) for name, b in s["budgets"].items()}
    yield labelled("budget_dollars", "Configured budgets (absent: no limit).", "budget", limits)
    left = {name: float(b["left"]) for name, b in s["budgets"].items()}
    yield labelled("budget_left_dollars", "Dollars left in each budget.", "budget", left)
    yield from gauge("requests_held", "Requests held for approval.", s["held"]["count"])
    yield from gauge(
        "requests_held_dollars",
        "Estimated dollars of the held requests.",
        float(s["held"]["estimated"]),
    )


def tracking(t: dict[str, Any]) -> Iterator[Metric]:
    yield from gauge(
        "collections_in_progress", "Accepted requests still collecting.", t["in_progress"]
    )
    today = {o: float(t[f"{o}_today"]) for o in CollectionOutcome.values}
    yield labelled(
        "collections_finished_today", "Collections finished today (UTC).", "outcome", today
    )
    yield from gauge(
        "collections_errored", "Requests whose collection errored.", float(t["errored"])
    )
    yield from gauge(
        "meters_collecting", "Accepted meters still collecting.", t["meters_collecting"]
    )
    yield from gauge(
        "oldest_unfinished_age_seconds",
        "Age of the oldest accepted meter still collecting (0: none).",
        t["oldest_unfinished_age_seconds"] or 0.0,
    )
    yield from gauge(
        "events_unprocessed",
        "UtilityAPI events stored, not yet processed.",
        t["events_unprocessed"],
    )
    yield from gauge(
        "tracking_calls_last_hour",
        "Tracking calls to UtilityAPI, last hour.",
        t["calls"]["last_hour"],
    )
    yield from gauge(
        "tracking_calls_failed_last_hour",
        "Tracking calls to UtilityAPI that failed, last hour.",
        t["calls"]["failed_last_hour"],
    )


def retries(r: dict[str, Any]) -> Iterator[Metric]:
    yield from gauge("requests_due", "Submitted requests due now.", r["due_now"])
    yield from gauge(
        "requests_waiting_retry", "Submitted requests waiting for a retry.", r["waiting_retry"]
    )
    yield from gauge("requests_in_flight", "Requests claimed by a worker now.", r["in_flight"])
    yield labelled(
        "submitted_by_attempts",
        "Submitted requests by attempts used so far.",
        "attempts",
        {k: float(v) for k, v in r["attempts_histogram"].items()},
    )


def stalls(s: dict[str, Any]) -> Iterator[Metric]:
    yield from gauge(
        "oldest_submitted_age_seconds",
        "Age of the oldest submitted request.",
        s["oldest_submitted_age_seconds"] or 0.0,
    )
    yield from gauge(
        "overdue_requests", "Requests due longer than the stall threshold.", s["overdue"]
    )
    yield from gauge(
        "long_running_attempts", "Claimed rows older than the HTTP timeout.", s["long_running"]
    )


class FleetCollector:
    """UtilityAPI calls of every worker (counted in Redis by gate/telemetry.py) and each
    worker's heartbeat age; nothing from here while Redis does not answer."""

    def collect(self) -> Iterable[Metric]:
        try:
            calls, latency = telemetry.read()
            beats = liveness.worker_heartbeats()
        except Exception as err:  # redis errors vary; collections_up says Redis is down
            log.warning("cannot read the fleet's call counters: %s", type(err).__name__)
            return
        yield from utilityapi_calls(calls, latency)
        ages = GaugeMetricFamily(
            PREFIX + "worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat (HEARTBEAT_INTERVAL_SECONDS apart).",
            labels=["worker"],
        )
        for name, at in sorted(beats.items()):
            ages.add_metric([name], max(time.time() - at, 0.0))
        yield ages


def utilityapi_calls(
    calls: dict[tuple[str, str], int], latency: dict[str, telemetry.Latency]
) -> Iterator[Metric]:
    counter = CounterMetricFamily(
        PREFIX + "utilityapi_calls",
        "UtilityAPI calls by endpoint and HTTP status (error: no answer).",
        labels=["endpoint", "status"],
    )
    for (endpoint, status), count in sorted(calls.items()):
        counter.add_metric([endpoint, status], count)
    yield counter
    histogram = HistogramMetricFamily(
        PREFIX + "utilityapi_call_duration_seconds",
        "Time from sending a UtilityAPI call to its answer (or error), by endpoint.",
        labels=["endpoint"],
    )
    for endpoint, figures in sorted(latency.items()):
        histogram.add_metric([endpoint], figures.cumulative(), sum_value=figures.total)
    yield histogram


REGISTRY = CollectorRegistry()
REGISTRY.register(OpsCollector())
REGISTRY.register(FleetCollector())


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)
