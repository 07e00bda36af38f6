"""`manage.py utilityapi_sandbox`: the UtilityAPI stand-in under gunicorn, every knob a flag."""

import argparse
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.server import GunicornSandbox
from sandbox.state import KNOBS, SandboxState

# Knobs whose default comes from the environment, so `make run` can wire the sandbox's
# webhooks to the service it runs beside without another command line.
FROM_ENVIRONMENT = {
    "webhook_url": "SANDBOX_WEBHOOK_URL",
    "webhook_secret": "UTILITYAPI_WEBHOOK_SECRET",
}


class Command(BaseCommand):
    help = "Serve the built-in UtilityAPI stand-in on loopback (for make run, tests, benchmarks)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--meters", type=int, default=12000, help="Meters in its registry.")
        parser.add_argument("--verbose", action="store_true", help="Log every request.")
        for name, knob in KNOBS.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(knob.default, bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                    default=knob.default, help=knob.help)  # fmt: skip
            else:
                default = os.environ.get(FROM_ENVIRONMENT.get(name, ""), knob.default)
                parser.add_argument(flag, type=type(knob.default), default=default,
                                    help=knob.help)  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        if options["port"] < 0 or options["meters"] < 0:
            raise CommandError("--port and --meters must not be negative")
        try:
            state = SandboxState(meters=options["meters"], **{k: options[k] for k in KNOBS})
        except ValueError as problem:
            raise CommandError(str(problem)) from None
        url = f"http://{options['host']}:{options['port']}/api/v2"
        hooks = f", webhooks to {state.webhook_url}" if state.webhook_url else ""
        self.stdout.write(
            f"UtilityAPI sandbox at {url} (token {state.token!r}, rate {state.rate or 'unlimited'}"
            f"/s, latency {state.latency_ms} ms, collections end after {state.collection_delay:g}"
            f" s{hooks})"
        )
        self.stdout.flush()
        GunicornSandbox(state, options["host"], options["port"], options["verbose"]).run()
