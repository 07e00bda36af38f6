"""Mutation testing of the modules that decide what is claimed, sent, paused and recorded.

`make mutation` (or `make mutation MODULE=client`) runs mutmut 3.8, configured in
pyproject.toml's [tool.mutmut], one module at a time in a fresh mutants/ copy: only that
file is mutated and only that module's fast tests run (never timed, end-to-end, fault or
browser tests). Prints `module | mutants | killed | score` and exits 1 when a module scores
under 90%. `MUTATION_CHILDREN` caps the parallel mutants (default: 2, or 1 for a module whose
tests share the suite's Redis database). See docs/testing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = 90.0
TIMED = [  # tests/test_gate.py's timing tests: elapsed time and live slot spacing
    "test_slots_are_spaced_one_interval_apart",
    "test_headroom_widens_the_spacing",
    "test_a_slot_beyond_max_wait_is_refused_and_not_taken",
    "test_concurrent_callers_never_share_a_slot",
    "test_clear_to_send_holds_a_caller_back_while_the_last_second_is_full",
]
GATE = ["tests/test_gate.py", *(f"--deselect=tests/test_gate.py::{name}" for name in TIMED)]
SERVICES, LUA, CALL = "tests/test_services.py", "tests/test_gate_lua.py", "tests/test_gate_call.py"
# name: (module, its fast tests, whether they use the suite's Redis database)
MODULES: dict[str, tuple[str, list[str], bool]] = {
    "client": ("client.py", ["tests/test_client.py", "tests/test_client_answers.py"], False),
    "validation": ("validation.py", ["tests/test_validation.py", SERVICES], False),
    "transitions": ("services/transitions.py", [SERVICES, "tests/test_transitions.py"], False),
    "outcomes": ("services/outcomes.py", [SERVICES, "tests/test_outcomes.py"], False),
    "leases": ("services/leases.py", [SERVICES, "tests/test_leases.py"], False),
    "broker": ("services/broker.py", [SERVICES, "tests/test_broker.py"], True),
    "policy": ("services/policy.py", [SERVICES, "tests/test_policy.py"], False),
    "delivery": ("delivery.py", ["tests/test_delivery.py"], True),
    "gate": ("gate/__init__.py", [CALL, *GATE], True),
    "limiter": ("gate/limiter.py", [LUA, *GATE], True),
    "pauses": ("gate/pauses.py", [LUA, CALL, *GATE], True),
}
KILLED = {1, 3, 24, -24, 152, 255, 36, 37}  # mutmut's exit codes for killed, timeout, type check


def run_one(name: str) -> None:
    """In a child process: mutmut run, narrowed to one module and its tests."""
    from mutmut import configuration

    path, tests, shares_redis = MODULES[name]
    cfg = configuration._load_config()
    cfg.only_mutate = [f"collections_app/{path}"]
    cfg.pytest_add_cli_args_test_selection = selection(tests)
    configuration._config = cfg
    from mutmut.__main__ import cli

    children = os.environ.get("MUTATION_CHILDREN") or ("1" if shares_redis else "2")
    cli(["run", "--max-children", children], standalone_mode=False)


def selection(tests: list[str]) -> list[str]:
    """The module's test files that exist (and their pytest options); when none does, all of
    them, so that pytest stops at once (rather than run the whole suite) and none is killed."""
    found = [t for t in tests if not t.endswith(".py") or (ROOT / t).exists()]
    return found if any(t.endswith(".py") for t in found) else tests


def score(name: str) -> tuple[int, int] | None:
    """(mutants, killed), or None when mutmut did not get to test them."""
    meta = ROOT / "mutants" / "collections_app" / f"{MODULES[name][0]}.meta"
    if not meta.exists():
        return None
    codes = list(json.loads(meta.read_text())["exit_code_by_key"].values())
    return len(codes), sum(code in KILLED for code in codes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", choices=MODULES, help="one module (default: all)")
    parser.add_argument("--run-one", choices=MODULES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.run_one:
        run_one(args.run_one)
        return 0
    rows, failed = [], False
    for name in [args.module] if args.module else list(MODULES):
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # no result carried over
        cmd = [sys.executable, __file__, "--run-one", name]
        code = subprocess.run(cmd, check=False).returncode  # noqa: S603 (this very script)
        result = score(name)
        # mutmut stops before testing when no selected test reaches the module: none killed.
        if result is None or (code != 0 and result[1] > 0):
            print(f"mutmut failed on {name}", file=sys.stderr)
            return 2
        mutants, killed = result
        pct = 100.0 * killed / mutants if mutants else 100.0
        failed |= pct < THRESHOLD
        rows.append(f"| {MODULES[name][0]} | {mutants} | {killed} | {pct:.1f}% |")
    print("\n| module | mutants | killed | score |\n|---|---|---|---|", *rows, sep="\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
