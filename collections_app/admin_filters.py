"""The request list's filters that must not scan the whole table.

Django's filter for a field without choices lists its values with `SELECT DISTINCT` over
every row, a full scan that grows with the table. These offer fixed choices, or values read
through a partial index, so the list answers as fast with a million requests as with ten.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from .models import CollectionRequest, Status
from .pricing import FLAT_FROM, FLAT_UNTIL

DEFAULT = "default"


class FailedErrorFilter(admin.SimpleListFilter):
    """The error types of failed requests (read through the `failed_error` partial index).

    Matches any request with that error, as the plain field filter did: the dashboard's links
    add `status__exact=failed` themselves."""

    title = "error"
    parameter_name = "error"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        errors = (
            CollectionRequest.objects.filter(status=Status.FAILED)
            .order_by("error")
            .values_list("error", flat=True)
            .distinct()
        )
        return [(error, error or "(none)") for error in errors]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        return None if value is None else queryset.filter(error=value)


# The price bands of the months asked (pricing.py), and the account's default.
DURATION_BANDS: dict[str, tuple[str, Q]] = {
    f"1-{FLAT_FROM - 1}": (f"1–{FLAT_FROM - 1} months", Q(collection_duration__lt=FLAT_FROM)),
    f"{FLAT_FROM}-{FLAT_UNTIL}": (
        f"{FLAT_FROM}–{FLAT_UNTIL} months",
        Q(collection_duration__gte=FLAT_FROM, collection_duration__lte=FLAT_UNTIL),
    ),
    f"{FLAT_UNTIL + 1}+": (f"over {FLAT_UNTIL} months", Q(collection_duration__gt=FLAT_UNTIL)),
    DEFAULT: ("account's default", Q(collection_duration__isnull=True)),
}


class DurationFilter(admin.SimpleListFilter):
    """Months asked, by the vendor's price bands (fixed choices: no query)."""

    title = "collection duration"
    parameter_name = "duration"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in DURATION_BANDS.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        band = DURATION_BANDS.get(self.value() or "")
        return None if band is None else queryset.filter(band[1])
