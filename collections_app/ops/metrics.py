"""One snapshot of everything the ops dashboard shows: the business figures (database), the
machinery probes, and the alerts derived from both. The page, /ops/metrics.json and the
Prometheus collector all read this one function, so they never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from . import figures, probes

OK, WARN, BAD = "ok", "warn", "bad"
PANELS = [
    "status",
    "timeline",
    "retries",
    "throttling",
    "stalls",
    "failures",
    "tracking",
    "spending",
    "machinery",
]


def snapshot(now: datetime | None = None) -> dict[str, Any]:
    """The figures, probes and alerts as of `now` (default: the current time)."""
    started, now = time.monotonic(), now or timezone.now()
    machinery = probes.machinery()
    try:
        business: dict[str, Any] | None = figures.business(now)
    except DatabaseError as err:  # the probes still tell what is down
        business, machinery["database"] = None, {"ok": False, "error": type(err).__name__}
    snap = _assemble(now, business, machinery)
    snap["alerts"] = alerts(snap)
    snap["panels"] = {panel: _worst(snap["alerts"], panel) for panel in PANELS}
    snap["state"] = _worst(snap["alerts"])
    snap["took_ms"] = round((time.monotonic() - started) * 1000, 1)
    return snap


def _assemble(
    now: datetime, business: dict[str, Any] | None, machinery: dict[str, Any]
) -> dict[str, Any]:
    business = business or dict.fromkeys(
        ["status", "timeline", "retries", "stalls", "tracking", "spending"]
    )
    throttled = business.pop("throttled", None) or {}
    return {
        "generated_at": now,
        "refresh_seconds": settings.OPS_REFRESH_SECONDS,
        **business,
        "failures": business.get("failures") or [],
        "throttling": {
            "calls_last_hour": throttled.get("calls_last_hour"),
            "last_429_at": throttled.get("last_at"),
            **machinery.pop("gate"),
        },
        "machinery": machinery,
    }


def _worst(alert_list: list[dict[str, str]], panel: str | None = None) -> str:
    levels = {a["level"] for a in alert_list if panel in (None, a["panel"])}
    return BAD if BAD in levels else WARN if WARN in levels else OK


# --- alerts: what is red or amber, and why ----------------------------------------------------


def alerts(snap: dict[str, Any]) -> list[dict[str, str]]:
    """Every condition an operator should look at, worst first."""
    found = [alert for rule in RULES for alert in rule(snap)]
    return sorted(found, key=lambda a: a["level"] != BAD)


def _alert(level: str, panel: str, message: str) -> dict[str, str]:
    return {"level": level, "panel": panel, "message": message}


def _machinery_alerts(snap: dict[str, Any]) -> list[dict[str, str]]:
    m, out = snap["machinery"], []
    if not m["database"]["ok"]:
        out.append(_alert(BAD, "machinery", f"Database unavailable ({m['database']['error']})"))
    if not m["redis"]["ok"]:
        why = "nothing is dispatched and the fleet's pauses are unknown"
        out.append(
            _alert(BAD, "machinery", f"Redis does not answer ({m['redis']['error']}): {why}")
        )
    elif not m["workers"]["ok"]:
        out.append(_alert(BAD, "machinery", "No Celery worker answers a ping"))
    return out + _sweep_alerts(m["sweep"], m["redis"]["ok"])


def _sweep_alerts(sweep: dict[str, Any], redis_ok: bool) -> list[dict[str, str]]:
    if sweep["last_run_at"] is None:  # never recorded, or unknown while Redis is down
        never = "The sweep has not run yet: is beat running?"
        return [_alert(WARN, "machinery", never)] if redis_ok else []
    if sweep["ok"]:
        return []
    stale = f"The sweep last ran {sweep['age_seconds']:.0f} s ago: is beat running?"
    return [_alert(BAD, "machinery", stale)]


def _throttling_alerts(snap: dict[str, Any]) -> list[dict[str, str]]:
    t = snap["throttling"]
    out = [
        _alert(BAD if pause["kind"] == "account" else WARN, "throttling", pause["message"])
        for pause in t["pauses"] or []
    ]
    if t["calls_last_hour"]:
        message = f"{t['calls_last_hour']} call(s) answered 429 in the last hour"
        out.append(_alert(WARN, "throttling", message))
    if t["call_rate"] is not None and t["call_rate"] > t["rate_limit"]:
        message = f"Measured {t['call_rate']}/s exceeds the limit of {t['rate_limit']}/s"
        out.append(_alert(WARN, "throttling", message))
    return out


def _stall_alerts(snap: dict[str, Any]) -> list[dict[str, str]]:
    s = snap["stalls"]
    if s is None:
        return []
    age, limit, out = s["oldest_submitted_age_seconds"], s["warning_after_seconds"], []
    if age is not None and age > limit:
        message = f"The oldest submitted request is {age:.0f} s old (warning after {limit} s)"
        out.append(_alert(WARN, "stalls", message))
    if s["overdue"]:
        message = f"{s['overdue']} request(s) due for more than {limit} s and not picked up"
        out.append(_alert(WARN, "stalls", message))
    if s["long_running"]:
        timeout = s["http_timeout_seconds"]
        message = (
            f"{s['long_running']} attempt(s) running longer than the HTTP timeout ({timeout:g} s)"
        )
        out.append(_alert(WARN, "stalls", message))
    return out


def _failure_alerts(snap: dict[str, Any]) -> list[dict[str, str]]:
    recent = [(g["last_hour"], g["error"]) for g in snap["failures"] if g["last_hour"]]
    if not recent:
        return []
    errors = ", ".join(f"{error} ({n})" for n, error in sorted(recent, reverse=True))
    return [_alert(WARN, "failures", f"Failures in the last hour: {errors}")]


def _tracking_alerts(snap: dict[str, Any]) -> list[dict[str, str]]:
    t = snap["tracking"]
    if t is None or not t["calls"]["failed_last_hour"]:
        return []
    failed = t["calls"]["failed_last_hour"]
    message = f"{failed} tracking call(s) to UtilityAPI failed in the last hour (see the admin)"
    return [_alert(WARN, "tracking", message)]


def _spending_alerts(snap: dict[str, Any]) -> list[dict[str, str]]:
    s, out = snap["spending"], []
    if s is None:
        return []
    if s["held"]["count"]:
        message = (
            f"{s['held']['count']} request(s) held over the budget wait for approval "
            f"(estimated ${s['held']['estimated']})"
        )
        out.append(_alert(WARN, "spending", message))
    for name, b in s["budgets"].items():
        if not b["left"]:
            out.append(_alert(WARN, "spending", f"The {name} budget of ${b['limit']} is used up"))
    return out


RULES: list[Callable[[dict[str, Any]], list[dict[str, str]]]] = [
    _machinery_alerts,
    _throttling_alerts,
    _stall_alerts,
    _failure_alerts,
    _tracking_alerts,
    _spending_alerts,
]
