"""Entry points: store collection requests (validated) and resubmit failed ones.

Storing is the whole of enqueueing: the row is the record of work to do, and a relay in the
workers picks it up once the caller's transaction has committed (services.broker). Nothing
here talks to the broker, so a broker outage never holds a caller. Each row carries its
estimated cost, and is let through or held by the budgets (services.budget)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import CollectionRequest, Source, Status
from ..validation import (
    clean_callback_url,
    clean_duration,
    clean_idempotency_key,
    clean_meters,
    invalid,
)
from . import budget
from .transitions import transition


def request_collection(
    meters: Any,
    collection_duration: Any = None,
    *,
    source: str = Source.API,
    requested_by: Any = None,
    callback_url: str | None = None,
    idempotency_key: str = "",
) -> CollectionRequest:
    """Validate and store one collection request: it is sent once the transaction commits.
    A callback_url gets a signed POST when the request reaches pending or failed and when
    its collection ends (services/notices.py).

    Raises ValidationError naming the field; then nothing is stored or sent. With an
    idempotency key already used by the same user for the same input, returns that request.
    Over a budget, it is stored held (`hold`, `hold_reason`) and waits for approval.
    """
    meters = clean_meters(meters)
    collection_duration = clean_duration(collection_duration)
    if source not in Source.values:
        raise invalid("source", f"source must be one of {', '.join(Source.values)}.")
    idempotency_key = clean_idempotency_key(idempotency_key)
    fields = {
        "meters": meters,
        "collection_duration": collection_duration,
        "callback_url": clean_callback_url(callback_url),
    }
    if idempotency_key:
        existing = _find_idempotent(requested_by, idempotency_key, fields)
        if existing:
            return existing
    now = timezone.now()
    row = CollectionRequest(
        **fields,
        source=source,
        requested_by=requested_by,
        idempotency_key=idempotency_key,
        next_attempt_at=now,
        dispatched_at=now,
        estimated_cost=budget.estimated_cost(len(meters), collection_duration),
    )
    # Without a budget, one statement: one short transaction (the database marks the registry's
    # meters too, a trigger). Inside a caller's transaction it gets a savepoint, so losing an
    # idempotency race leaves the caller's transaction usable.
    try:
        with budget.admission():
            budget.admit([row], now)
            row.save(force_insert=True)
    except IntegrityError:
        if not idempotency_key:
            raise
        existing = _find_idempotent(requested_by, idempotency_key, fields)  # lost a race
        assert existing is not None
        return existing
    return row


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
    common = {"collection_duration": collection_duration, "source": source}
    queued = {"next_attempt_at": now, "dispatched_at": now}
    rows = [
        CollectionRequest(
            meters=group,
            requested_by=requested_by,
            estimated_cost=budget.estimated_cost(len(group), collection_duration),
            **common,
            **queued,
        )
        for group in groups
    ]
    with budget.admission():  # bulk_create is one transaction by itself without a budget
        budget.admit(rows, now)
        return CollectionRequest.objects.bulk_create(rows)


def _find_idempotent(user: Any, key: str, fields: dict[str, Any]) -> CollectionRequest | None:
    existing = CollectionRequest.objects.filter(requested_by=user, idempotency_key=key).first()
    if existing and any(getattr(existing, name) != value for name, value in fields.items()):
        raise invalid(
            "idempotency_key",
            "This Idempotency-Key was already used for a request with other meters, duration "
            "or callback_url.",
        )
    return existing


def retry_failed(requests: Iterable[CollectionRequest]) -> int:
    """Give failed requests a fresh set of attempts; returns how many were resubmitted.
    Each row is locked and re-read first, and only the fields of the retry are written."""
    now = timezone.now()
    retried = 0
    with transaction.atomic():
        for request in CollectionRequest.objects.select_for_update().filter(
            pk__in=[r.pk for r in requests], status=Status.FAILED
        ):
            transition(
                request,
                Status.SUBMITTED,
                attempts=0,
                next_attempt_at=now,
                dispatched_at=now,
                announced_at=None,
                error="",
                error_description="",
                last_http_status=None,
                # A retried rejection is let through by the person retrying it.
                admitted_at=request.admitted_at or now,
            )
            request.save(update_fields=RETRY_FIELDS)
            retried += 1
    return retried


RETRY_FIELDS = [
    "status",
    "attempts",
    "next_attempt_at",
    "dispatched_at",
    "announced_at",
    "error",
    "error_description",
    "last_http_status",
    "admitted_at",
    "updated",
]
