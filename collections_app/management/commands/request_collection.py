import json
import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from collections_app import services
from collections_app.api.errors import ApiError
from collections_app.api.serializers import as_json
from collections_app.models import CollectionRequest, Source, Status

# Exit codes (docs/api.md): 0 stored (or, with --wait, accepted: pending).
EXIT_FAILED = 1  # the request failed
EXIT_BAD_INPUT = 2  # nothing stored (argparse usage errors exit 2 as well)
EXIT_STILL_SUBMITTED = 3  # --wait ran out while the request was still submitted (or held)
POLL_SECONDS = 0.2


class Command(BaseCommand):
    help = (
        "Request a UtilityAPI historical collection for METER... and print it as JSON (the "
        "API's shape). Exit 0: stored, or with --wait pending; 1: failed; 2: bad input, "
        "nothing stored; 3: --wait ran out while still submitted, or the request is held over the "
        "budget."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("meters", nargs="+", metavar="METER", help="Meter uids.")
        parser.add_argument(
            "--duration", type=int, default=None, help="Months, 1-36 (default: the account's)."
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Wait up to SECONDS for the request to leave `submitted`.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        wait = options["wait"]
        if wait is not None and not 0 <= wait < float("inf"):
            raise CommandError(
                "--wait must be a number of seconds, 0 or more.", returncode=EXIT_BAD_INPUT
            )
        request = self.create(options["meters"], options["duration"])
        if wait is not None:
            request = wait_for(request, wait)
        self.stdout.write(json.dumps(as_json(request), indent=2))
        self.exit_for(request, wait)

    def create(self, meters: list[str], duration: int | None) -> CollectionRequest:
        try:
            return services.request_collection(meters, duration, source=Source.CLI)
        except ValidationError as err:
            problem = ApiError.from_validation(err)
            raise CommandError(
                f"{problem.detail} (nothing stored)", returncode=EXIT_BAD_INPUT
            ) from err

    def exit_for(self, request: CollectionRequest, wait: float | None) -> None:
        if request.hold:
            message = f"Request {request.pk} is on hold: {request.hold_reason}"
            if wait is None:
                self.stderr.write(message)
                return
            raise CommandError(message, returncode=EXIT_STILL_SUBMITTED)
        if request.status == Status.FAILED:
            raise CommandError(
                f"Request {request.pk} failed: {request.error}: {request.error_description}",
                returncode=EXIT_FAILED,
            )
        if wait is not None and request.status == Status.SUBMITTED:
            raise CommandError(
                f"Request {request.pk} is still submitted after {wait:g}s "
                f"(attempts: {request.attempts}; last error: {request.error or 'none'}).",
                returncode=EXIT_STILL_SUBMITTED,
            )


def wait_for(request: CollectionRequest, seconds: float) -> CollectionRequest:
    """Poll the database until the request leaves `submitted`, is found held (a person must
    decide), or `seconds` have passed; returns it as last read."""
    deadline = time.monotonic() + seconds
    while True:
        request.refresh_from_db()
        remaining = deadline - time.monotonic()
        if request.status != Status.SUBMITTED or request.hold or remaining <= 0:
            return request
        time.sleep(min(POLL_SECONDS, remaining))
