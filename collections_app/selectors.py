"""Reads for the admin, the API and the dashboard."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from typing import Any

from django.db.models import Q, QuerySet

from .gate import pauses
from .models import CallbackDelivery, CollectionRequest, MeterProgress

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


def active_pauses() -> list[pauses.Pause]:
    """Pauses in force now; empty (and logged) when Redis cannot be asked."""
    try:
        return pauses.in_force()
    except Exception as err:  # Redis down: the page must still render
        log.warning("cannot read pauses from Redis: %s", type(err).__name__)
        return []


def parse_sweep_record(raw: bytes | str | None) -> dict[str, Any] | None:
    """The sweep's last run ({"at": epoch seconds, ...counts}), or None if never recorded."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return {**data, "at": float(data["at"])}
    except (ValueError, KeyError, TypeError):
        return None


def meters_progress(request: CollectionRequest) -> list[dict[str, object]]:
    """Per accepted meter, in the order UtilityAPI accepted them: its stage, status and when
    either last changed (null before anything is known). Reads `meter_progress` prefetched;
    a request nothing was accepted for yet (a new one) costs no query."""
    if not request.accepted_meters:
        return []
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


def callback_deliveries(request: CollectionRequest, limit: int = 50) -> list[CallbackDelivery]:
    """The request's latest callback attempts, oldest first (its page lists them)."""
    rows = CallbackDelivery.objects.filter(request=request).order_by("-created", "-id")[:limit]
    return list(reversed(rows))
