"""The retry policy: what one UtilityAPI answer means for a request (accepted, refused, or
tried again when), applied in memory through the transition table; the caller saves."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.conf import settings

from ..client import Accepted
from ..exceptions import PermanentError, Throttled, UtilityAPIError
from ..models import CollectionRequest, Status
from .transitions import transition


def apply(request: CollectionRequest, outcome: Accepted | UtilityAPIError, now: datetime) -> None:
    """Move `request` (in memory) to where UtilityAPI's answer puts it."""
    if isinstance(outcome, Accepted):
        return _accept(request, outcome)
    request.last_http_status = outcome.status_code
    if isinstance(outcome, Throttled):  # waits for Retry-After; not counted as an attempt
        return _retry_at(request, outcome, now + timedelta(seconds=outcome.retry_after or 0))
    request.attempts += 1
    if isinstance(outcome, PermanentError):
        return _fail(request, outcome.error, outcome.description)
    if request.attempts >= settings.COLLECTIONS_MAX_ATTEMPTS:
        last = f"the last: {outcome.error}: {outcome.description}"
        why = f"Gave up after {request.attempts} attempts; {last}"
        return _fail(request, "retries_exhausted", why)
    _retry_at(request, outcome, now + timedelta(seconds=backoff(request.attempts)))


def _retry_at(request: CollectionRequest, outcome: UtilityAPIError, when: datetime) -> None:
    transition(
        request,
        Status.SUBMITTED,
        next_attempt_at=when,
        error=outcome.error,
        error_description=outcome.description,
    )


def _fail(request: CollectionRequest, error: str, description: str) -> None:
    transition(
        request, Status.FAILED, next_attempt_at=None, error=error, error_description=description
    )


def _accept(request: CollectionRequest, outcome: Accepted) -> None:
    triggered = set(outcome.meters)
    accepted = [m for m in request.meters if m in triggered]
    ignored = [m for m in request.meters if m not in triggered]
    request.attempts += 1
    request.last_http_status = 200
    if not accepted:  # alone, UtilityAPI would have answered 400 expired_or_revoked
        return transition(
            request,
            Status.FAILED,
            next_attempt_at=None,
            ignored_meters=ignored,
            accepted_meters=[],
            error="expired_or_revoked",
            error_description="UtilityAPI dropped every meter of this request: "
            "their authorizations are revoked or expired.",
        )
    transition(
        request,
        Status.PENDING,
        next_attempt_at=None,
        accepted_meters=accepted,
        ignored_meters=ignored,
        error="",
        error_description="",
    )


def backoff(attempts: int) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random, capped."""
    step = min(
        settings.COLLECTIONS_RETRY_MAX_SECONDS,
        settings.COLLECTIONS_RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0),
    )
    return step / 2 + random.uniform(0, step / 2)
