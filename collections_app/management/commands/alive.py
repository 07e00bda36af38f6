"""`manage.py alive worker|beat [--max-age SECONDS]`: a liveness probe's command. Exits 0
when the process's heartbeat file was touched within --max-age seconds, else 1."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from collections_app import liveness

FILES = {"worker": "WORKER_HEARTBEAT_FILE", "beat": "BEAT_HEARTBEAT_FILE"}


class Command(BaseCommand):
    help = "Exit 0 if the worker's (or beat's) heartbeat file is fresh, else 1."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("process", choices=sorted(FILES))
        parser.add_argument("--max-age", type=float, default=60.0, help="seconds (default 60)")

    def handle(self, *args: Any, process: str, max_age: float, **options: Any) -> None:
        path = getattr(settings, FILES[process])
        seconds = liveness.age(path)
        if seconds is None:
            raise CommandError(f"{process}: no heartbeat file at {path}")
        if seconds > max_age:
            raise CommandError(f"{process}: heartbeat {seconds:.0f} s old (max {max_age:g} s)")
        self.stdout.write(f"{process}: heartbeat {seconds:.1f} s old")
