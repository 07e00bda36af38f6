"""The callback pipeline: claim a due attempt, render the request as the API shows it, sign,
POST once, record; again until nothing is due. No database transaction is open across the
POST. The JSON is the API's own (api/serializers.py), so receivers parse one shape."""

from __future__ import annotations

import hashlib
import logging
import time

from django.conf import settings
from rest_framework.renderers import JSONRenderer

from . import callbacks, selectors
from .api.serializers import as_json
from .models import CallbackDelivery, CollectionRequest
from .services import callbacks as outbox

log = logging.getLogger(__name__)
DRAIN_SECONDS = 60.0  # one task's turn before it hands the rest to another


def deliver_due(budget: float = DRAIN_SECONDS) -> int:
    """Send due callback attempts one at a time until none is due or `budget` seconds have
    gone (then another task takes over). Returns how many were sent."""
    deadline = time.monotonic() + budget
    sent = 0
    while row := outbox.claim():
        send(row)
        sent += 1
        if time.monotonic() > deadline:
            outbox.kick()
            return sent
    outbox.follow_up()  # retries due before beat's next run
    return sent


def send(row: CallbackDelivery) -> None:
    """POST the request's JSON, signed, to its callback_url, and record the answer."""
    request = selectors.with_progress(CollectionRequest.objects.all()).get(pk=row.request_id)
    body = JSONRenderer().render(as_json(request))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "collections-service-callback",
        "X-Collections-Event": row.moment,
        "X-Collections-Delivery": str(row.event_id),
        callbacks.SIGNATURE_HEADER: callbacks.signature(
            body, settings.COLLECTIONS_CALLBACK_SECRET, int(time.time())
        ),
    }
    if settings.COLLECTIONS_CALLBACK_SECRET:
        answer = callbacks.post(request.callback_url or "", body, headers)
    else:  # the secret was removed since the URL was accepted: nothing unsigned leaves
        answer = callbacks.Answer(None, "not_configured", "COLLECTIONS_CALLBACK_SECRET is unset", 0)
    log.info(
        "callback %s #%d of %s: %s in %d ms",
        row.moment,
        row.attempt,
        request.pk,
        answer.status_code or answer.error,
        answer.duration_ms,
    )
    outbox.record(row, answer, hashlib.sha256(body).hexdigest())
