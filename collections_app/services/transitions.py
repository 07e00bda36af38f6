"""The status machine: the only status changes there are, in one table."""

from __future__ import annotations

from typing import Any

from ..models import CollectionRequest, Status

# (from, to): the only status changes there are.
ALLOWED_TRANSITIONS = {
    (Status.SUBMITTED, Status.SUBMITTED),  # another attempt is scheduled
    (Status.SUBMITTED, Status.PENDING),  # UtilityAPI accepted it
    (Status.SUBMITTED, Status.FAILED),  # UtilityAPI refused it, or retries ran out
    (Status.FAILED, Status.SUBMITTED),  # an operator retries it
}


class TransitionError(Exception):
    pass


def transition(request: CollectionRequest, to: Status, **fields: Any) -> None:
    """Move `request` to status `to` in memory (the caller saves), refusing unlisted moves."""
    if (request.status, to) not in ALLOWED_TRANSITIONS:
        raise TransitionError(f"{request.id}: {request.status} → {to} is not allowed")
    request.status = to
    for name, value in fields.items():
        setattr(request, name, value)
