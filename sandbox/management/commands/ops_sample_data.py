"""Fill the database with the dashboard's benchmark dataset, and optionally time a snapshot."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from collections_app.ops import figures, metrics
from sandbox import sample


class Command(BaseCommand):
    help = (
        "Store sample collection requests and attempts (default 100,000 and about 300,000) "
        "for the ops dashboard. For a throwaway database only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requests", type=int, default=100_000)
        parser.add_argument("--attempts-per-request", type=int, default=3)
        parser.add_argument("--days", type=float, default=7.0, help="Spread over this many days.")
        parser.add_argument(
            "--measure", type=int, default=0, metavar="N", help="Then time N snapshots."
        )
        parser.add_argument("--force", action="store_true", help="Even with DJANGO_DEBUG off.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["force"]:
            raise CommandError("DJANGO_DEBUG is off: this looks like production (use --force).")
        if options["requests"] < 0 or options["attempts_per_request"] < 1 or options["days"] <= 0:
            raise CommandError("--requests ≥ 0, --attempts-per-request ≥ 1 and --days > 0")
        started = time.monotonic()
        made = sample.build(options["requests"], options["attempts_per_request"], options["days"])
        took = time.monotonic() - started
        self.stdout.write(f"stored {made[0]} requests and {made[1]} attempts in {took:.1f} s")
        if options["measure"]:
            self.measure(options["measure"])

    def measure(self, runs: int) -> None:
        """Time the database figures alone, then the whole snapshot behind /ops/metrics.json
        (with the probes: a ping waits its full timeout when no worker answers)."""
        jobs: list[tuple[str, Callable[[], object]]] = [
            ("figures", lambda: figures.business(timezone.now())),
            ("snapshot", metrics.snapshot),
        ]
        for name, work in jobs:
            timings = []
            for _ in range(runs):
                started = time.monotonic()
                work()
                timings.append((time.monotonic() - started) * 1000)
            self.stdout.write(
                f"{name} over {runs} runs: median {statistics.median(timings):.1f} ms, "
                f"min {min(timings):.1f} ms, max {max(timings):.1f} ms"
            )
