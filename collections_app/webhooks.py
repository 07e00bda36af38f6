"""POST /webhooks/utilityapi/: UtilityAPI's event posts. Verify, store, answer fast; the
events are processed by a worker (services/tracking.py). Operator doc: docs/tracking.md.

The signature (UtilityAPI's webhooks page and three independent client implementations):
`X-UtilityAPI-Webhook-Signature` is the hex SHA-256 digest (plain SHA-256, not an HMAC) of
"<webhook secret>.<X-UtilityAPI-Webhook-Salt>.<body>". Implementations differ on the body
bytes, so the raw body is tried first, then its re-serialisation with 4-space indentation.
The scheme has no timestamp: replays are harmless because each event uid is stored once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import EventSource
from .services import tracking

log = logging.getLogger(__name__)

SALT_HEADER = "X-UtilityAPI-Webhook-Salt"
SIGNATURE_HEADER = "X-UtilityAPI-Webhook-Signature"


def signature(secret: str, salt: str, body: bytes) -> str:
    """The hex digest UtilityAPI sends for `body`."""
    return hashlib.sha256(secret.encode() + b"." + salt.encode() + b"." + body).hexdigest()


def signature_matches(secret: str, salt: str, raw: bytes, given: str) -> bool:
    """True when `given` signs the raw body or its 4-space re-serialisation (constant time)."""
    given_bytes = given.strip().lower().encode()
    if hmac.compare_digest(signature(secret, salt, raw).encode(), given_bytes):
        return True
    try:
        indented = json.dumps(json.loads(raw), indent=4).encode()
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return hmac.compare_digest(signature(secret, salt, indented).encode(), given_bytes)


def _error(status: int, error: str, description: str) -> JsonResponse:
    return JsonResponse({"error": error, "error_description": description}, status=status)


@csrf_exempt
@require_POST
def utilityapi(request: HttpRequest) -> JsonResponse:
    """200 once the post's events are stored; 403, 400 or 413 and nothing stored otherwise."""
    secret = settings.UTILITYAPI_WEBHOOK_SECRET
    if not secret:
        raise Http404("webhooks are off: UTILITYAPI_WEBHOOK_SECRET is not set")
    raw = _bounded_body(request)
    if raw is None:
        limit = settings.COLLECTIONS_WEBHOOK_MAX_BODY_BYTES
        return _error(413, "request_too_large", f"The body is larger than {limit} bytes.")
    salt, given = request.headers.get(SALT_HEADER), request.headers.get(SIGNATURE_HEADER)
    if not salt or not given or not signature_matches(secret, salt, raw, given):
        log.warning("webhook refused: missing or bad signature")
        return _error(403, "invalid_signature", f"Missing or bad {SIGNATURE_HEADER}.")
    try:
        events = parse_post(raw)
    except ValueError as err:
        log.warning("webhook refused: %s", err)
        return _error(400, "invalid_json", str(err))
    tracking.receive(events, EventSource.WEBHOOK)
    return JsonResponse({"received": len(events)})


def _bounded_body(request: HttpRequest) -> bytes | None:
    """The body, read no further than the limit; None when it is larger."""
    limit = settings.COLLECTIONS_WEBHOOK_MAX_BODY_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    raw = request.read(limit + 1)
    return None if len(raw) > limit else raw


def parse_post(raw: bytes) -> list[tracking.IncomingEvent]:
    """The post's events; ValueError (with what is wrong) for anything else than
    {"events": [event, …], …} where every event has a uid and a type."""
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError("The body is not JSON.") from err
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise ValueError('The body must be a JSON object {"events": [...], "next": ...}.')
    events = [tracking.parse_event(item) for item in body["events"]]
    return list({e.uid: e for e in events}.values())  # one post may repeat an event
