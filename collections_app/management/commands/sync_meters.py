"""`python manage.py sync_meters`: refresh the meter registry (its authorizations, then its
meters) from UtilityAPI once, showing progress after every page of meters: a line rewritten in
place on a terminal, plain lines otherwise."""

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from collections_app.exceptions import UtilityAPIError
from collections_app.services.registry import SyncResult, sync_meters


class Command(BaseCommand):
    help = (
        "Read every page of UtilityAPI's GET /authorizations and GET /meters into the meter "
        "registry; print counts."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        """Print the sync's counts; any failure exits non-zero with the reason."""
        try:
            with Progress(self.stdout) as progress:
                result = sync_meters(on_page=progress.page)
        except ImproperlyConfigured as err:
            raise CommandError(f"Cannot call UtilityAPI: {err}") from err
        except UtilityAPIError as err:
            raise CommandError(
                f"Meter sync failed: {describe(err)}\nPages read before the failure were kept."
            ) from err
        self.stdout.write(self.style.SUCCESS(f"Synced {result}."))


def describe(err: UtilityAPIError) -> str:
    """One line for an operator: the HTTP status (if any answer came), the error type, why."""
    answer = f"HTTP {err.status_code}" if err.status_code else "no HTTP answer"
    return f"{answer}, {err.error}: {err.description}"


class Progress:
    """Counts after each page: rewritten in place on a terminal, one line each otherwise."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out
        self.in_place = out.isatty()
        self.shown = False

    def page(self, result: SyncResult) -> None:
        line = f"Syncing meters: page {result.pages}, {result.seen:,} meter(s) read"
        if self.in_place:
            self.out.write(f"\r\x1b[K{line}", ending="")
            self.out.flush()
        else:
            self.out.write(line)
        self.shown = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        """Finish the line being rewritten, so that what follows starts on its own."""
        if self.in_place and self.shown:
            self.out.write("")
