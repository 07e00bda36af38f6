"""Entry points: store a collection request (validated) and enqueue it after commit;
resubmit failed ones."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import CollectionRequest, Source, Status
from ..validation import clean_duration, clean_idempotency_key, clean_meters, invalid
from .broker import _dispatch_on_commit
from .transitions import transition


def request_collection(
    meters: Any,
    collection_duration: Any = None,
    *,
    source: str = Source.API,
    requested_by: Any = None,
    idempotency_key: str = "",
) -> CollectionRequest:
    """Validate, store and (once the transaction commits) enqueue one collection request.

    Raises ValidationError naming the field; then nothing is stored or sent. With an
    idempotency key already used by the same user for the same input, returns that request.
    """
    meters = clean_meters(meters)
    collection_duration = clean_duration(collection_duration)
    if source not in Source.values:
        raise invalid("source", f"source must be one of {', '.join(Source.values)}.")
    idempotency_key = clean_idempotency_key(idempotency_key)
    fields = {"meters": meters, "collection_duration": collection_duration}
    if idempotency_key:
        existing = _find_idempotent(requested_by, idempotency_key, fields)
        if existing:
            return existing
    try:
        with transaction.atomic():
            request = CollectionRequest.objects.create(
                **fields,
                source=source,
                requested_by=requested_by,
                idempotency_key=idempotency_key,
                next_attempt_at=timezone.now(),
            )
            _dispatch_on_commit([request.pk])
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = _find_idempotent(requested_by, idempotency_key, fields)  # lost a race
        assert existing is not None
        return existing
    return request


def request_collections(
    meter_groups: Sequence[list[str]],
    collection_duration: Any = None,
    *,
    source: str = Source.REGISTRY,
    requested_by: Any = None,
) -> list[CollectionRequest]:
    """Store many requests at once (bulk triggers); validated like request_collection."""
    collection_duration = clean_duration(collection_duration)
    groups = [clean_meters(group) for group in meter_groups]
    now = timezone.now()
    with transaction.atomic():
        created = CollectionRequest.objects.bulk_create(
            CollectionRequest(
                meters=group,
                collection_duration=collection_duration,
                source=source,
                requested_by=requested_by,
                next_attempt_at=now,
            )
            for group in groups
        )
        _dispatch_on_commit([r.pk for r in created])
    return created


def _find_idempotent(user: Any, key: str, fields: dict[str, Any]) -> CollectionRequest | None:
    existing = CollectionRequest.objects.filter(requested_by=user, idempotency_key=key).first()
    if existing and (existing.meters, existing.collection_duration) != tuple(fields.values()):
        raise invalid(
            "idempotency_key",
            "This Idempotency-Key was already used for a request with other meters or duration.",
        )
    return existing


def retry_failed(requests: Iterable[CollectionRequest]) -> int:
    """Give failed requests a fresh set of attempts; returns how many were resubmitted."""
    now = timezone.now()
    ids = []
    with transaction.atomic():
        for request in CollectionRequest.objects.select_for_update().filter(
            pk__in=[r.pk for r in requests], status=Status.FAILED
        ):
            transition(
                request,
                Status.SUBMITTED,
                attempts=0,
                next_attempt_at=now,
                error="",
                error_description="",
                last_http_status=None,
            )
            request.save()
            ids.append(request.pk)
        _dispatch_on_commit(ids)
    return len(ids)
