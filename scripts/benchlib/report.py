"""docs/benchmarks.md from one benchmark's results: the machine, the settings, the medians,
the ratios against baselines measured in the same run, and the targets."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import notes
from .procs import ROOT


def machine(versions: dict[str, Any]) -> dict[str, Any]:
    import celery
    import django

    return {
        "CPU": _cpu_model(),
        "cores (nproc)": os.cpu_count(),
        "RAM": f"{_mem_total_gb():.1f} GiB",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "Python": platform.python_version(),
        "Django": django.get_version(),
        "Celery": celery.__version__,
        "PostgreSQL": versions["postgresql"],
        "Redis": versions["redis"],
        "commit": _git_head(),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_total_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _git_head() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 (read-only)
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"],  # noqa: S607 (read-only)
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (done.stdout.strip() or "?") + (" (with uncommitted changes)" if dirty else "")


# --- formatting -----------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def settings_line(settings: dict[str, Any]) -> str:
    return "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()) + "."


def met(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "**no**")


# --- the document ---------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    from . import sections

    lines = ["# Benchmarks", "", *notes.INTRO, ""]
    lines += sections.header(results)
    lines += sections.summary(results)
    for section in sections.ALL:
        lines += section(results)
    lines += [*notes.HOW_TO_RUN, "", *notes.DECISIONS, "", *notes.CHANGES, ""]
    return "\n".join(lines).rstrip() + "\n"


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results))
