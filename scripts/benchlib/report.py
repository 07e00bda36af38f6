"""docs/benchmarks.md from one run's results: the template benchmarks.md next to this file,
rendered with Django's template engine, and the filters it uses; plus the machine's facts."""

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


@register.filter(name="n")
def fmt(value: Any) -> str:
    """A figure: grouped thousands, one decimal below 100."""
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


@register.filter
def pct(value: float) -> str:
    return f"{value:.1%}"


@register.filter
def at_most(value: float, limit: float) -> str:
    return "yes" if value <= limit else "**no**"


@register.filter
def at_least(value: float, limit: float) -> str:
    return "yes" if value >= limit else "**no**"


@register.filter
def settings_line(settings: dict[str, Any]) -> str:
    return "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()) + "."


@register.filter
def answers(by_status: dict[Any, int]) -> str:
    return ", ".join(f"{count:,} × {status}" for status, count in sorted(by_status.items()))


def render(results: dict[str, Any]) -> str:
    engine = template.Engine(autoescape=False, builtins=["benchlib.report"])
    context = template.Context(results, autoescape=False)
    text = str(engine.from_string(TEMPLATE.read_text()).render(context))
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results))
