"""Reads for the admin, the API and the dashboard."""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Q, QuerySet

from . import gate
from .models import CollectionRequest, MeterProgress

log = logging.getLogger(__name__)


def search_requests(queryset: QuerySet, term: str) -> QuerySet:
    """Requests whose id is `term`, or whose meters list contains the uid `term`."""
    query = (
        Q(meters__contains=[term])
        if _supports_json_contains(queryset)
        else Q(meters__icontains=f'"{term}"')
    )
    with contextlib.suppress(ValueError):
        query |= Q(pk=uuid.UUID(term))
    return queryset.filter(query)


def _supports_json_contains(queryset: QuerySet) -> bool:
    from django.db import connections

    return connections[queryset.db].features.supports_json_field_contains


@dataclass(frozen=True)
class PauseInfo:
    kind: str
    until: datetime
    reason: str

    @property
    def message(self) -> str:
        what = "Rate limited" if self.kind == "throttle" else "UtilityAPI account unusable"
        return (
            f"{what}: no calls to UtilityAPI until {self.until:%H:%M:%S} UTC; "
            f"waiting requests stay submitted. ({self.reason})"
        )


def active_pauses() -> list[PauseInfo]:
    """Pauses in force now; empty (and logged) when Redis cannot be asked."""
    try:
        pauses = gate.pauses()
    except Exception as err:  # Redis down: the page must still render
        log.warning("cannot read pauses from Redis: %s", type(err).__name__)
        return []
    return [PauseInfo(p.kind, datetime.fromtimestamp(p.until, UTC), p.reason) for p in pauses]


def requests_by_status() -> dict[str, int]:
    from django.db.models import Count

    rows = CollectionRequest.objects.order_by().values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows}


def meters_progress(request: CollectionRequest) -> list[dict[str, object]]:
    """Per accepted meter, in the order UtilityAPI accepted them: its stage, status and when
    either last changed (null before anything is known). Reads `meter_progress` prefetched."""
    rows: dict[str, MeterProgress] = {row.meter: row for row in request.meter_progress.all()}
    out: list[dict[str, object]] = []
    for meter in request.accepted_meters or []:
        row = rows.get(meter)
        out.append(
            {
                "meter": meter,
                "stage": (row.stage or None) if row else None,
                "status": (row.status or None) if row else None,
                "status_message": (row.status_message or None) if row else None,
                "updated": row.changed if row else None,
            }
        )
    return out


def with_progress(queryset: QuerySet) -> QuerySet:
    """`queryset` with each request's meter progress fetched in one more query."""
    return queryset.prefetch_related("meter_progress")
