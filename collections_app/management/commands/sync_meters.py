"""`python manage.py sync_meters`: refresh the meter registry from UtilityAPI once."""

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from collections_app.exceptions import UtilityAPIError
from collections_app.services.registry import sync_meters


class Command(BaseCommand):
    help = "Read every page of UtilityAPI's GET /meters into the meter registry; print counts."

    def handle(self, *args: Any, **options: Any) -> None:
        """Print the sync's counts; any failure exits non-zero with the reason."""
        try:
            result = sync_meters()
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
