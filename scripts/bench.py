"""`make bench`: the collections service's benchmark (docs/benchmarks.md says what it measures).

It owns everything it runs against: a PostgreSQL database of its own (dropped and created,
then migrated), a Redis db of its own (flushed), the UtilityAPI sandbox and real Celery
workers as subprocesses, all on loopback. Usage:

    python scripts/bench.py [--runs N] [--quick] [--out docs/benchmarks.md] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import dbscale, procs, report, scenarios, state  # noqa: E402
from benchlib.procs import Sandbox  # noqa: E402
from benchlib.run import Bench, Pool  # noqa: E402

FULL = {"rate": 3000, "overhead": 1500, "storm": 1000, "bulk": 10000, "web": 500,
        "lone": 9, "stream": 500, "scale": 100_000, "scale_samples": 7}  # fmt: skip
QUICK = {"rate": 60, "overhead": 60, "storm": 40, "bulk": 2000, "web": 10,
         "lone": 2, "stream": 20, "scale": 300, "scale_samples": 2}  # fmt: skip
POOLS = "threads:16,threads:4,threads:8x2,prefork:16"
SCENARIOS = ["rate", "overhead", "storm", "coalescing", "scale"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (medians)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, one run: a smoke run")
    parser.add_argument("--pools", default=POOLS, help="worker pools to compare; first is used")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--database", default="bench", help="PostgreSQL database it owns")
    parser.add_argument("--redis-db", type=int, default=9, help="Redis db number it owns")
    parser.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run")
    parser.add_argument("--worker-tree", type=Path, help="run the workers from this checkout")
    parser.add_argument("--from-json", type=Path, help="only write the report of a --json file")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    args.pools = [parse_pool(spec) for spec in args.pools.split(",")]
    args.only = [name for name in args.only.split(",") if name]
    if unknown := set(args.only) - set(SCENARIOS):
        parser.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
    return args


def parse_pool(spec: str) -> tuple[str, int, int]:
    """ "threads:16" → ("threads", 16, 1); "threads:8x2" → two worker processes of 8 threads."""
    pool, _, size = spec.partition(":")
    concurrency, _, processes = size.partition("x")
    return pool, int(concurrency), int(processes or 1)


def setup_django(target: state.Target) -> None:
    os.environ.update(state.base_env(target), DJANGO_SETTINGS_MODULE="project.settings")
    import django

    django.setup()


def run_all(bench: Bench, pools: list[Pool], only: list[str]) -> dict[str, Any]:
    """The scenarios in `only`; alternative pools get one run in scenario 1 (a run is a
    minute), all runs in scenario 2."""
    pool, runs, out = pools[0], bench.runs, {}
    if "rate" in only:
        out["rate"] = [scenarios.rate_limited(bench, pool, runs)]
        out["rate"] += [scenarios.rate_limited(bench, other, 1) for other in pools[1:]]
    if "overhead" in only:
        out["overhead"] = [scenarios.overhead(bench, other, runs) for other in pools]
        out["overhead_defaults"] = scenarios.overhead(bench, pool, runs, coalescing=True)
        out["web"] = scenarios.web_cost(bench, pool)
    if "storm" in only:
        out["storm"] = scenarios.throttle_storm(bench, pool, runs)
    if "coalescing" in only:
        s1_rps = out["rate"][0]["summary"]["rps"] if "rate" in out else 0.0
        out["coalescing"] = scenarios.coalescing(bench, pool, runs, s1_rps)
    if "scale" in only:
        counts = bench.counts
        out["scale"] = dbscale.scale(bench, pool, counts["scale"], counts["scale_samples"])
    return {**out, "memory": bench.memory}


def main(argv: list[str] | None = None) -> int:
    args, started = parse_args(argv), time.monotonic()
    if args.from_json:
        report.write(json.loads(args.from_json.read_text()), args.out)
        return 0
    if args.worker_tree:
        procs.WORKER_ROOT = args.worker_tree.resolve()
    target = state.make_target(args.database, args.redis_db)
    state.create_database(target)
    setup_django(target)
    machine = report.machine(state.versions(target))
    sandbox = Sandbox(state.base_env(target))
    counts = QUICK if args.quick else FULL
    try:
        bench = Bench(target, sandbox, args.runs, args.quick, counts)
        results = run_all(bench, args.pools, args.only)
    finally:
        sandbox.stop()
        state.flush_redis(target)
        if not args.keep_db:
            state.drop_database(target)
    results["machine"] = machine
    results["meta"] = _meta(args, started)
    report.write(results, args.out)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out} in {results['meta']['minutes']:.1f} min")
    return 0


def _meta(args: argparse.Namespace, started: float) -> dict[str, Any]:
    command = "make bench" + (f" BENCH_ARGS='{' '.join(sys.argv[1:])}'" if sys.argv[1:] else "")
    return {
        "command": command,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (time.monotonic() - started) / 60,
        "runs": args.runs,
        "mode": "quick" if args.quick else "full",
        "worker_tree": str(args.worker_tree or ""),
    }


if __name__ == "__main__":
    sys.exit(main())
