"""docs/benchmarks.md from one run's results: the rows of each table here, the prose in the
template benchmarks.md next to this file (Django's template engine, used standalone)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil
from django import template

from .rig import ROOT

TEMPLATE = Path(__file__).with_name("benchmarks.md")
register = template.Library()


def machine(versions: dict[str, Any]) -> dict[str, Any]:
    import celery
    import django

    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)  # noqa: S603
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)  # noqa: S603
    return {
        "CPU": _cpu_model(),
        "cores (nproc)": os.cpu_count(),
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load average at start": " ".join(f"{x:.2f}" for x in psutil.getloadavg()),
        "Python": platform.python_version(),
        "Django": django.get_version(),
        "Celery": celery.__version__,
        "PostgreSQL": versions["postgresql"],
        "Redis": versions["redis"],
        "commit": head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout else ""),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@register.filter
def table(rows: list[list[Any]], header: str) -> str:
    """A Markdown table: `header` is the column titles separated by "|"."""
    names = header.split("|")
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    return "\n".join(lines + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows])


@register.filter
def settings_line(settings: dict[str, Any]) -> str:
    return "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()) + "."


def pct(x: float) -> str:
    return f"{x:.1%}"


def ms(x: float) -> str:
    return f"{x:,.1f} ms"


def row(
    figure: str, measured: Any, target: str, ok: bool | None, baseline: str = "–", ratio: str = "–"
) -> list[Any]:
    """One line of the summary: `ok` None when the figure is only reported."""
    return [figure, measured, baseline, ratio, target, "–" if ok is None else met(ok)]


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


# --- the summary: one row per figure with its same-run baseline ---------------------------------


def summary(r: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    limit = r["limit"]
    if c := r.get("creation"):
        s = c["summary"]
        baseline = f"INSERT + delay(): {ms(s['baseline_ms'])}"
        rows.append(
            row(
                "request_collection, no worker, per request",
                ms(s["ms"]),
                "≤ 0.33",
                s["ratio"] <= 1 / 3,
                baseline,
                f"{s['ratio']:.2f}",
            )
        )
    if i := r.get("ingest"):
        p, health = i["post"], f"/healthz: {i['ingest' if False else 'healthz']['rps']:.0f}/s"
        rows.append(
            row(
                "POST /api/collections/, 16 clients",
                f"{p['rps']:.0f}/s",
                "≥ 0.5",
                i["ratio"] >= 0.5,
                health,
                f"{i['ratio']:.2f}",
            )
        )
        latency = f"{ms(p['p50_ms'])} / {ms(p['p99_ms'])}, {pct(i['accepted'])}"
        rows.append(
            row("… p50 / p99, answered 202", latency, "every answer 202", i["accepted"] == 1)
        )
    if b := r.get("backlog"):
        s = b["summary"]
        ok = s["drain_s"] <= 3 and s["calls"] <= 5 and s["status_429"] == 0
        measured = f"{s['drain_s']:.2f} s, {s['calls']:.0f}, {s['status_429']}"
        baseline = f"one call each at {limit}/s: {s['requests'] / limit:.0f} s"
        rows.append(
            row(
                f"backlog of {s['requests']:,} drained: seconds, POSTs, 429s",
                measured,
                "≤ 3 s, ≤ 5, 0",
                ok,
                baseline,
                f"{s['rps'] / limit:.0f}× the limit",
            )
        )
        ok = s["messages_created"] <= 50 and s["messages_left"] == 0
        measured = f"{s['messages_created']:.0f} / {s['messages_left']:.0f}"
        rows.append(row("… broker messages created / left", measured, "a few dozen / 0", ok))
    if rate := r.get("rate"):
        s = rate[0]["summary"]
        ok = s["rate_ratio"] >= 0.97 and s["status_429"] == 0
        rows.append(
            row(
                f"coalescing off, {s['requests']:,} requests: requests/s, 429s",
                f"{s['rps']:.1f}/s, {s['status_429']}",
                "≥ 0.97, 0",
                ok,
                f"the limit: {limit}/s",
                f"{s['rate_ratio']:.2f}",
            )
        )
        rss = r["memory"].get(rate[0]["settings"]["pool"], 0)
        rows.append(
            row(
                "… early calls, worker RSS",
                f"{s['early_calls']}, {rss:.0f} MB",
                "0, report",
                s["early_calls"] == 0,
            )
        )
    if f := r.get("frozen"):
        held = ("≥ " if f["capped"] else "") + f"{f['blocked_s']:.2f} s"
        rows.append(
            row("Redis frozen: request_collection held", held, "≤ 2 s", f["blocked_s"] <= 2)
        )
        calls = f["calls_with_the_request"]
        rows.append(row("… calls carrying it after SIGCONT", calls, "exactly 1", calls == 1))
    return rows + _other_summary(r)


def _other_summary(r: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    if o := r.get("overhead"):
        for name, one in [("coalescing off", o[0]), ("defaults", r.get("overhead_defaults"))]:
            if one:
                s = one["50ms"]["summary"]
                rows.append(
                    row(
                        f"end to end at 50 ms, {name}",
                        f"{s['rps']:.0f}/s",
                        "≥ 0.90",
                        s["ratio"] >= 0.9,
                        f"bare loop: {s['bare_rps']:.0f}/s",
                        f"{s['ratio']:.2f}",
                    )
                )
        cpu = o[0]["0ms"]["summary"]["worker_cpu_ms_per_request"]
        rows.append(row("worker CPU per request at 0 ms", ms(cpu), "report", None))
    if i := r.get("ingest"):
        rows.append(
            row("web CPU per request created", ms(i["post"]["cpu_ms_per_request"]), "report", None)
        )
    if st := r.get("storm"):
        s, per_run = st["summary"], ", ".join(str(x["calls_in_pause"]) for x in st["runs"])
        rows.append(
            row(
                "calls within the 5 s after a 429 (each run)",
                per_run,
                "0",
                s["calls_in_pause"] == 0,
            )
        )
        drain, ideal = s["drain_after_429_s"], s["ideal_after_429_s"]
        rows.append(
            row(
                "drain after the 429",
                f"{drain:.1f} s",
                "report",
                None,
                f"ideal: {ideal:.0f} s",
                f"{drain / ideal:.2f}",
            )
        )
    if co := r.get("coalescing"):
        bulk, burst = co["bulk"]["summary"], co["burst"]["summary"]
        rows.append(
            row(
                "bulk trigger: calls / seconds",
                f"{bulk['calls']:.0f} / {bulk['drain_s']:.1f} s",
                "report",
                None,
            )
        )
        rows.append(
            row(
                "coalesced burst: calls / requests per second",
                f"{burst['calls']:.0f} / {burst['rps']:.0f}",
                "a few calls",
                burst["calls"] <= 10,
                "coalescing off",
                fmt(burst["vs_uncoalesced"]),
            )
        )
        lone = " / ".join(ms(v) for v in reversed(co["lone"].values()))
        rows.append(row("lone request, created → outcome (window / none)", lone, "report", None))
    if sc := r.get("scale"):
        for page, p in sc["pages"].items():
            rows.append(row(page, ms(p["median_ms"]), "< 300 ms", p["median_ms"] < 300))
        d = sc["drain"]
        rows.append(
            row(
                f"{d['requests']:,} queued requests drained",
                f"{d['drain_s']:.1f} s",
                "< 20 s",
                d["drain_s"] < 20,
            )
        )
    return rows


# --- the sections' tables -----------------------------------------------------------------------


def tables(r: dict[str, Any]) -> dict[str, Any]:
    mem = r.get("memory", {})
    out: dict[str, Any] = {}
    if rate := r.get("rate"):
        out["rate"] = [
            [
                one["settings"]["pool"],
                len(one["runs"]),
                f"{s['drain_s']:.1f} ({s['ideal_s']:.0f})",
                s["rps"],
                pct(s["rate_ratio"]),
                s["status_429"],
                s["early_calls"],
                s["busiest_second"],
                s["worker_cpu_ms_per_request"],
                mem.get(one["settings"]["pool"]),
            ]
            for one in rate
            for s in [one["summary"]]
        ]
    if o := r.get("overhead"):
        both = [(one, "") for one in o] + [(r["overhead_defaults"], " (coalescing on)")]
        out["overhead"] = [
            [
                one["settings"]["pool"] + note,
                a["rps"],
                a["bare_rps"],
                f"{a['ratio']:.2f}",
                b["rps"],
                b["bare_rps"],
                f"{b['ratio']:.2f}",
                b["worker_cpu_ms_per_request"],
                mem.get(one["settings"]["pool"]),
            ]
            for one, note in both
            for a, b in [(one["50ms"]["summary"], one["0ms"]["summary"])]
        ]
    if st := r.get("storm"):
        ideal = st["summary"]["ideal_after_429_s"]
        out["storm"] = [
            [
                i,
                x["calls_in_pause"],
                x["early_calls"],
                x["status_429"],
                f"{x['drain_after_429_s']:.1f} ({ideal:.0f})",
            ]
            for i, x in enumerate(st["runs"], start=1)
        ]
    if co := r.get("coalescing"):
        s, b = co["burst"]["summary"], co["bulk"]["summary"]
        out["bulk"] = [[b["requests"], b["calls"], b["drain_s"]]]
        vs = f"{s['vs_uncoalesced']:.1f}×" if s["vs_uncoalesced"] else None
        out["burst"] = [
            [
                s["requests"],
                s["calls"],
                s["drain_s"],
                s["rps"],
                vs,
                s["idle_s"],
                s["worker_cpu_ms_per_request"],
            ]
        ]
        out["lone"] = [[window, v] for window, v in co["lone"].items()]
        out["stream"] = [
            [w, v["requests"], v["create_s"], v["calls"], v["drain_s"]]
            for w, v in co["stream"].items()
        ]
    if sc := r.get("scale"):
        out["pages"] = [
            [page, p["status"], p["median_ms"], p["max_ms"], p["queries"]]
            for page, p in sc["pages"].items()
        ]
        d = sc["drain"]
        out["scale_drain"] = [
            [
                d["requests"],
                d["drain_s"],
                d["rps"],
                d["calls"],
                d["status_429"],
                d["messages_created"],
            ]
        ]
    if c := r.get("creation"):
        out["creation"] = [
            [i, x["ms"], x["baseline_ms"], f"{x['ratio']:.2f}"]
            for i, x in enumerate(c["runs"], start=1)
        ]
    if i := r.get("ingest"):
        out["ingest"] = [
            [name, one["rps"], one["p50_ms"], one["p99_ms"], one["by_status"]]
            for name, one in [("GET /healthz", i["healthz"]), ("POST /api/collections/", i["post"])]
        ]
    if b := r.get("backlog"):
        out["backlog"] = [
            [
                i,
                x["drain_s"],
                x["rps"],
                x["calls"],
                x["status_429"],
                x["messages_created"],
                x["messages_left"],
                x["idle_s"],
            ]
            for i, x in enumerate(b["runs"], start=1)
        ]
    return out


def render(results: dict[str, Any]) -> str:
    engine = template.Engine(autoescape=False, builtins=["benchlib.report"])
    context = {
        **results,
        "summary": summary(results),
        "tables": tables(results),
        "machine_rows": [[k, v] for k, v in results["machine"].items()],
    }
    text = engine.from_string(TEMPLATE.read_text()).render(
        template.Context(context, autoescape=False)
    )
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results))
