"""`make bench` in --quick mode: it runs every scenario end to end and writes a sane report.

Tiny counts and one run, so that it takes well under a minute; no timing is asserted (the
machine may be shared), only that every scenario produced figures of the right shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
# Named after this checkout's database, so that suites running side by side do not share it.
DATABASE = urlsplit(os.environ.get("DATABASE_URL", "")).path.strip("/").lower() + "_bench_smoke"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "scripts/bench.py", "--quick", "--pools", "threads:4",
           "--database", DATABASE,
           "--out", str(out / "benchmarks.md"), "--json", str(out / "results.json")]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (out / "benchmarks.md").read_text(), json.loads((out / "results.json").read_text())


def test_report_has_every_section_and_the_machine(quick_run: tuple[str, dict[str, Any]]) -> None:
    report, results = quick_run
    for heading in ["## Machine", "## Summary against the targets", "## 1. Creating a request",
                    "## 2. API ingest", "## 3. Backlog drain", "## 4. At the rate limit",
                    "## 5. Frozen broker", "## 6. Overhead", "## 7. Throttle storm",
                    "## 8. Bulk trigger", "## 9. Coalescing", "## 10. Database scale",
                    "EXPLAIN (ANALYZE", "## How to run"]:  # fmt: skip
        assert heading in report
    assert "{{" not in report and "{%" not in report and "&lt;" not in report
    assert results["machine"]["cores (nproc)"] == os.cpu_count()
    assert results["machine"]["PostgreSQL"] and results["machine"]["Redis"]


def test_every_request_reached_an_outcome(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    drains = [*results["rate"][0]["runs"], *results["storm"]["runs"]]
    for latency in ("50ms", "0ms"):
        drains += results["overhead"][0][latency]["runs"]
    drains += results["coalescing"]["burst"]["runs"] + results["coalescing"]["bulk"]["runs"]
    for run in drains:
        assert run["pending"] + run["failed"] == run["requests"] > 0
        assert run["drain_s"] > 0 and run["worker_cpu_ms_per_request"] > 0
    for run in results["backlog"]["runs"]:
        assert run["pending"] + run["failed"] == run["requests"] > 0
        # Storing publishes nothing (the row is the queue): the relay's messages go out
        # while the worker drains, so only the calls are certain to be counted.
        assert run["messages_created"] >= 0 and run["calls"] >= 1


def test_figures_are_sane(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    rate = results["rate"][0]["summary"]
    assert rate["rate_ratio"] > 0 and rate["status_429"] >= 0 and rate["busiest_second"] > 0
    assert rate["rss_mb"] > 0
    assert results["overhead"][0]["50ms"]["summary"]["bare_rps"] > 0
    storm = results["storm"]["runs"][0]
    assert storm["by_status"].get("429", 0) >= 1  # the scripted throttle was answered
    burst = results["coalescing"]["burst"]["summary"]
    assert 1 <= burst["calls"] < burst["requests"]  # coalesced into fewer calls
    assert all(page["status"] == 200 for page in results["scale"]["pages"].values())
    assert all("Execution Time" in page["explain"] for page in results["scale"]["pages"].values())
    assert results["scale"]["drain"]["calls"] >= 1


def test_baselines_are_measured_in_the_same_run(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    creation = results["creation"]["summary"]
    assert creation["ms"] > 0 and creation["baseline_ms"] > 0
    ingest = results["ingest"]
    assert ingest["healthz"]["by_status"] == {"200": results["counts"]["ingest"]}
    assert ingest["post"]["rps"] > 0 and ingest["post"]["cpu_ms_per_request"] > 0
    assert 0 <= ingest["accepted"] <= 1
    assert results["frozen"]["blocked_s"] > 0
    assert results["frozen"]["calls_with_the_request"] >= 1  # the frozen request was sent


def test_bench_database_is_dropped_afterwards(quick_run: tuple[str, dict[str, Any]]) -> None:
    import psycopg

    sys.path.insert(0, str(ROOT / "scripts"))
    from benchlib.state import default_server_url

    with psycopg.connect(default_server_url()) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
    assert found is None


def test_unknown_scenario_is_refused() -> None:
    cmd = [sys.executable, "scripts/bench.py", "--only", "nonsense"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown scenario" in done.stderr
