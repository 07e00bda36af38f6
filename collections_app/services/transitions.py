"""The status machine: the only status changes there are, in one table; and the one place
that notices a request reaching `pending` or `failed` (services/notices.py)."""

from __future__ import annotations

from typing import Any

from ..models import CollectionRequest, Status
from . import notices

# (from, to): the only status changes there are.
ALLOWED_TRANSITIONS = {
    (Status.SUBMITTED, Status.SUBMITTED),  # another attempt is scheduled
    (Status.SUBMITTED, Status.PENDING),  # UtilityAPI accepted it
    (Status.SUBMITTED, Status.FAILED),  # UtilityAPI refused it, or retries ran out
    (Status.FAILED, Status.SUBMITTED),  # an operator retries it
}


class TransitionError(Exception):
    pass


RESOLVED = {Status.PENDING, Status.FAILED}  # the moves the caller is told about


def transition(request: CollectionRequest, to: Status, **fields: Any) -> None:
    """Move `request` to status `to` in memory, refusing unlisted moves. The caller saves it;
    a move to pending or failed must be saved inside transaction.atomic(), where its callback
    attempt is stored too, and `request_resolved` is sent once that commits."""
    if (request.status, to) not in ALLOWED_TRANSITIONS:
        raise TransitionError(f"{request.id}: {request.status} → {to} is not allowed")
    request.status = to
    for name, value in fields.items():
        setattr(request, name, value)
    if to in RESOLVED:
        notices.reached(request, to)
