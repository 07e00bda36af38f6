"""Leases: a worker claims due rows (with coalesced companions) before it calls UtilityAPI,
so a second delivery of the same work cannot POST twice, and only the lease holder may save
what the call answered."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..models import CollectionRequest
from . import broker

log = logging.getLogger(__name__)
LOOKAHEAD = 100  # due rows looked at past the meter budget, for smaller ones that still fit


def lease_seconds() -> float:
    return (
        settings.UTILITYAPI_CONNECT_TIMEOUT
        + settings.UTILITYAPI_READ_TIMEOUT
        + settings.COLLECTIONS_LEASE_MARGIN_SECONDS
    )


def claim(request_id: Any, task_id: str) -> list[CollectionRequest]:
    """Lease request `request_id` if it is due and free (None: the oldest due, free one) with the
    due, free requests of the same duration that fit in one POST (coalescing), in one short
    transaction. Rows another worker is claiming are skipped, never waited for. Empty when
    nothing is due."""
    now = timezone.now()
    due = broker.due(now)
    with transaction.atomic():
        head = due.filter(pk=request_id) if request_id is not None else due
        own = (
            head.order_by("next_attempt_at")
            .select_for_update(skip_locked=True)
            .values_list("pk", "collection_duration", "meters")
            .first()
        )
        if own is None:
            return []
        pk, duration, meters = own
        coalescing = len(meters) < settings.COLLECTIONS_BATCH_MAX_METERS
        companions = _companions(due.exclude(pk=pk), duration, len(meters)) if coalescing else []
        lease = {
            "lease_token": uuid.uuid4(),
            "lease_expires_at": now + timedelta(seconds=lease_seconds()),
            "task_id": task_id,
        }
        CollectionRequest.objects.filter(pk__in=[pk, *companions]).update(**lease)
    return list(CollectionRequest.objects.filter(pk__in=[pk, *companions]).order_by("created"))


def _companions(due: Any, duration: int | None, taken: int) -> list[Any]:
    """Due rows of the same duration that fit in the POST's remaining meter budget, oldest
    first (smaller ones past a row too big still fit)."""
    room = settings.COLLECTIONS_BATCH_MAX_METERS - taken
    if room <= 0:
        return []
    rows = (
        due.filter(collection_duration=duration)
        .order_by("next_attempt_at")
        .select_for_update(skip_locked=True)
        .values_list("pk", "meters")[: room + LOOKAHEAD]
    )
    picked = []
    for pk, meters in rows:
        if len(meters) <= room:
            picked.append(pk)
            room -= len(meters)
    return picked


def renew(batch: Sequence[CollectionRequest]) -> None:
    """Make the lease cover the POST about to start. A lease taken moments ago still covers
    it with most of its margin: then nothing is written (the common case, one query saved)."""
    now = timezone.now()
    until = now + timedelta(seconds=lease_seconds())
    held = batch[0].lease_expires_at
    spare = timedelta(seconds=settings.COLLECTIONS_LEASE_MARGIN_SECONDS / 2)
    if held is not None and held >= until - spare:
        return
    CollectionRequest.objects.filter(
        pk__in=[r.pk for r in batch], lease_token=batch[0].lease_token
    ).update(lease_expires_at=until)
    for request in batch:
        request.lease_expires_at = until


def still_held(batch: Sequence[CollectionRequest]) -> list[CollectionRequest]:
    """The rows of `batch` still leased to it, locked until the caller's transaction ends.
    A worker that outlived its lease (frozen, or slower than its timeouts) finds its rows
    taken over by the sweep and another worker: their newer state must stand."""
    token = batch[0].lease_token if batch else None
    held = set(
        CollectionRequest.objects.select_for_update()
        .filter(pk__in=[r.pk for r in batch], lease_token=token)
        .values_list("pk", flat=True)
    )
    if len(held) < len(batch):
        log.warning("lease lost: %d stale outcome(s) not saved", len(batch) - len(held))
    return [r for r in batch if r.pk in held]
