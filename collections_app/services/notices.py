"""Telling the caller. A request reaching `pending` or `failed` (transitions.transition calls
`reached`, whoever moves it) or getting its collection's outcome (tracking.settle calls
`finished`) stores the first callback attempt in the same transaction, when the request has a
callback_url; `request_resolved` is sent once that transaction commits."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import transaction

from ..models import CallbackDelivery, CollectionRequest, Moment
from ..signals import request_resolved
from . import callbacks

log = logging.getLogger(__name__)
UNSENT = "_unsent_notices"  # on the instance: its notices whose transaction has not committed


class Notice:
    """One `request_resolved` to send after commit, unless the move is withdrawn first."""

    def __init__(self, request: CollectionRequest, deliveries: list[Any]) -> None:
        self.request = request
        self.deliveries = deliveries  # the callback attempts stored with the move
        self.withdrawn = False

    def send(self) -> None:
        vars(self.request).pop(UNSENT, None)
        if self.withdrawn:
            return
        for receiver, result in request_resolved.send_robust(sender=self.request):
            if isinstance(result, Exception):
                log.error("request_resolved receiver %r failed: %r", receiver, result)


def reached(request: CollectionRequest, status: str) -> None:
    """`request` (in memory, saved by the caller in its transaction) reached `status`:
    pending or failed. Must run inside that transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("a move to pending or failed must be saved in transaction.atomic()")
    deliveries = callbacks.queue([request.pk], status) if request.callback_url else []
    notice = Notice(request, deliveries)
    vars(request).setdefault(UNSENT, []).append(notice)
    transaction.on_commit(notice.send, robust=True)


def withdraw(requests: Iterable[CollectionRequest]) -> None:
    """These requests' moves were not saved after all (a worker that lost its lease): no
    signal, and their callback attempts stored in this transaction are removed."""
    stored: list[Any] = []
    for request in requests:
        for notice in vars(request).pop(UNSENT, []):
            notice.withdrawn = True
            stored += notice.deliveries
    if stored:
        CallbackDelivery.objects.filter(pk__in=stored).delete()


def finished(request_ids: Sequence[Any]) -> None:
    """These requests got their collection_outcome in the caller's transaction."""
    with_url = CollectionRequest.objects.filter(
        pk__in=list(request_ids), callback_url__isnull=False
    )
    callbacks.queue(list(with_url.values_list("pk", flat=True)), Moment.COLLECTION_OUTCOME)
