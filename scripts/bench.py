"""`make bench`: the collections service's benchmark (docs/benchmarks.md says what it measures).

It owns everything it runs against: a PostgreSQL database of its own (dropped and created,
then migrated), a private redis-server, the UtilityAPI sandbox, real Celery workers and the
Procfile's web server as subprocesses, all on loopback. Usage:

    python scripts/bench.py [--runs N] [--quick] [--only a,b] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import ingest, report, rig, scale, scenarios, state  # noqa: E402
from benchlib.rig import RedisServer, Sandbox  # noqa: E402
from benchlib.run import RATE, Bench, Pool  # noqa: E402

FULL = {"rate": 1000, "overhead": 1500, "storm": 1000, "bulk": 10000, "burst": 3000,
        "backlog": 3000, "creation": 300, "ingest": 2000, "lone": 9, "stream": 500,
        "scale": 1_000_000, "scale_queue": 30_000, "scale_samples": 7,
        "frozen_cap_s": 30, "retry_after": 5}  # fmt: skip
QUICK = {"rate": 30, "overhead": 30, "storm": 20, "bulk": 1000, "burst": 60, "backlog": 60,
         "creation": 20, "ingest": 64, "lone": 2, "stream": 10, "scale": 300,
         "scale_queue": 50, "scale_samples": 2, "frozen_cap_s": 3,
         "retry_after": 1}  # fmt: skip
POOLS = "threads:16,threads:4,threads:8x2,prefork:16"
SCENARIOS = ["creation", "frozen", "rate", "overhead", "storm", "backlog", "coalescing",
             "ingest", "scale"]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (medians)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, one run: a smoke run")
    parser.add_argument("--pools", default=POOLS, help="worker pools to compare; first is used")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--database", default="bench", help="PostgreSQL database it owns")
    parser.add_argument("--keep-db", action="store_true", help="keep the database afterwards")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run")
    parser.add_argument("--scale-requests", type=int, help="scenario 10's dataset (requests)")
    parser.add_argument("--scale-queued", type=int, help="requests drained on top of it")
    parser.add_argument("--worker-tree", type=Path, help="run the workers from this checkout")
    parser.add_argument("--from-json", type=Path, help="only write the report of a --json file")
    args = parser.parse_args(argv)
    args.pools = [parse_pool(spec) for spec in args.pools.split(",")]
    args.only = [name for name in args.only.split(",") if name]
    if unknown := set(args.only) - set(SCENARIOS):
        parser.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
    args.counts = dict(QUICK if args.quick else FULL)
    for key, value in [("scale", args.scale_requests), ("scale_queue", args.scale_queued)]:
        if value is not None:
            args.counts[key] = value
    args.runs = 1 if args.quick else args.runs
    return args


def parse_pool(spec: str) -> Pool:
    """ "threads:16" → ("threads", 16, 1); "threads:8x2" → two worker processes of 8 threads."""
    pool, _, size = spec.partition(":")
    concurrency, _, processes = size.partition("x")
    return pool, int(concurrency), int(processes or 1)


def setup_django(target: state.Target) -> None:
    os.environ.update(state.base_env(target), DJANGO_SETTINGS_MODULE="project.settings")
    import django

    django.setup()


def run_all(bench: Bench, pools: list[Pool], only: list[str]) -> dict[str, Any]:
    """The scenarios in `only`; alternative pools get one run in the rate-limit scenario, every
    run in the overhead one. Each scenario's duration goes to stderr."""
    runs, out = bench.runs, dict[str, Any](limit=RATE)

    def step(name: str, key: str, work: Any) -> None:
        """Run one scenario; one that fails is reported as such and the others still run."""
        if name in only:
            started = time.monotonic()
            try:
                out[key] = work()
            except Exception as err:  # whatever it was, the report says it
                out.setdefault("errors", {})[key] = f"{type(err).__name__}: {err}"
                bench.stop_worker()
                traceback.print_exc()
            print(f"{key}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    step("creation", "creation", lambda: ingest.creation(bench, max(runs, 5) if runs > 1 else 1))

    def rates() -> list[dict[str, Any]]:
        """The first pool last, so that the throttle storm (same settings) keeps its workers."""
        others = [scenarios.rate_limited(bench, pool, 1) for pool in pools[1:]]
        return [scenarios.rate_limited(bench, pools[0], runs), *others]

    step("rate", "rate", rates)
    step("storm", "storm", lambda: scenarios.throttle_storm(bench, runs))
    step("overhead", "overhead", lambda: [scenarios.overhead(bench, pool, runs) for pool in pools])
    step("overhead", "overhead_defaults", lambda: scenarios.overhead(bench, pools[0], runs, True))
    step("backlog", "backlog", lambda: scenarios.backlog(bench, runs))
    uncoalesced = out["rate"][0]["summary"]["rps"] if "rate" in out else 0.0
    step("coalescing", "coalescing", lambda: scenarios.coalescing(bench, runs, uncoalesced))
    step("ingest", "ingest", lambda: ingest.api_ingest(bench))
    step("frozen", "frozen", lambda: ingest.frozen_broker(bench))
    step("scale", "scale", lambda: scale.scale(bench))
    return out


def main(argv: list[str] | None = None) -> int:
    args, started = parse_args(argv), time.monotonic()
    if args.from_json:
        setup_django(state.make_target(args.database, "redis://127.0.0.1:9/0"))
        report.write(json.loads(args.from_json.read_text()), args.out)
        return 0
    if args.worker_tree:
        rig.WORKER_ROOT = args.worker_tree.resolve()
    redis_server = RedisServer()
    target, sandbox, bench = state.make_target(args.database, redis_server.url), None, None
    try:
        started_db = time.monotonic()
        state.create_database(target)
        print(f"database: {time.monotonic() - started_db:.1f} s", file=sys.stderr)
        setup_django(target)
        machine = report.machine(state.versions(target))
        sandbox = Sandbox(state.base_env(target))
        bench = Bench(target, redis_server, sandbox, args.pools[0], args.runs, args.counts)
        results = run_all(bench, args.pools, args.only)
    finally:
        if bench:
            bench.stop_worker()
        if sandbox:
            sandbox.stop()
        redis_server.stop()
        if not args.keep_db:
            state.drop_database(target)
    results |= {"machine": machine, "meta": _meta(args, started), "counts": args.counts}
    if args.json:  # first, so that --from-json can render it again
        args.json.write_text(json.dumps(results, indent=1, default=str))
    report.write(results, args.out)
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
