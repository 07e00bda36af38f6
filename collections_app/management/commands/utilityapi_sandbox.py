from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from collections_app.sandbox import SandboxServer, SandboxState


class Command(BaseCommand):
    help = "Serve the built-in UtilityAPI stand-in on loopback (for make run, tests, benchmarks)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument(
            "--rate", type=float, default=0, help="Requests/s before 429 (0: none)."
        )
        parser.add_argument("--latency-ms", type=int, default=0, help="Delay before each answer.")
        parser.add_argument("--token", default="sandbox-token", help="The Bearer token it accepts.")
        parser.add_argument("--meters", type=int, default=12000, help="Meters in its registry.")
        parser.add_argument("--verbose", action="store_true", help="Log every request.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["port"] < 0 or options["rate"] < 0 or options["latency_ms"] < 0:
            self.stderr.write("--port, --rate and --latency-ms must not be negative")
            raise SystemExit(2)
        state = SandboxState(
            options["token"], options["rate"], options["latency_ms"], options["meters"]
        )
        server = SandboxServer(state, options["host"], options["port"], options["verbose"])
        self.stdout.write(
            f"UtilityAPI sandbox at {server.url} (token {options['token']!r}, "
            f"rate {options['rate'] or 'unlimited'}/s, latency {options['latency_ms']} ms)"
        )
        self.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
