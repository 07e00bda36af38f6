"""Callbacks end to end: a real Celery worker, Redis, PostgreSQL, the sandbox, and a callback
receiver on loopback (so COLLECTIONS_CALLBACK_ALLOW_PRIVATE=1, except where it is refused)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from collections_app import selectors, services
from collections_app.api.serializers import as_json
from collections_app.models import CallbackDelivery, CollectionOutcome, CollectionRequest

from .conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
SECRET = "e2e-callback-secret"
WEBHOOK_SECRET = "e2e-webhook-secret"


class Receiver:
    """A loopback HTTP server: each POST gets the next of `answers` (then 200); it records
    every request it got, by path."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.got: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.got.append(
                        {"path": self.path, "headers": dict(self.headers), "raw": raw}
                    )
                    status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/collections"

    def posts(self, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until at least `count` POSTs came; all of them."""

        def enough() -> list[dict[str, Any]] | None:
            with self.lock:
                return list(self.got) if len(self.got) >= count else None

        result = wait_until(enough, timeout=timeout, interval=0.05)
        assert result is not None
        return result


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(*answers: int) -> Receiver:
        started.append(Receiver(*answers))
        return started[-1]

    yield start
    for one in started:
        one.server.shutdown()
        one.server.server_close()


@pytest.fixture
def callback_worker(settings: Any, start_worker: Callable[..., Any]) -> Callable[..., Any]:
    """Settings for callbacks here and in a worker started with them (overrides as keywords)."""
    settings.COLLECTIONS_CALLBACK_SECRET = SECRET
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = True
    settings.DEBUG = True  # the receiver speaks http, as the worker (DJANGO_DEBUG=1) allows

    def start(**overrides: Any) -> Any:
        env = {
            "COLLECTIONS_CALLBACK_SECRET": SECRET,
            "COLLECTIONS_CALLBACK_ALLOW_PRIVATE": "1",
            "COLLECTIONS_CALLBACK_RETRY_BASE_SECONDS": "0.5",
            **overrides,
        }
        return start_worker(**env)

    return start


def verified(post: dict[str, Any], window: float = 300) -> dict[str, Any]:
    """The POST's JSON, once its signature is checked as docs/api.md tells receivers to."""
    header = post["headers"]["X-Collections-Signature"]
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    assert abs(time.time() - timestamp) < window  # not a replay of an old POST
    signed = f"{timestamp}.".encode() + post["raw"]
    expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    return json.loads(post["raw"])


def attempts(request: CollectionRequest, count: int, timeout: float = 30) -> list[Any]:
    """Wait until `count` attempts were tried; all of them, oldest first."""

    def tried() -> list[Any] | None:
        rows = list(CallbackDelivery.objects.filter(request=request).order_by("created", "id"))
        return rows if sum(r.tried_at is not None for r in rows) >= count else None

    result = wait_until(tried, timeout=timeout)
    assert result is not None
    return result


def test_pending_is_posted_signed_with_the_api_json(
    callback_worker: Callable[..., Any], receiver: Callable[..., Receiver]
) -> None:
    hook = receiver()
    callback_worker()
    request = services.request_collection(["m-1", "revoked-2"], 12, callback_url=hook.url)
    (post,) = hook.posts()
    body = verified(post)
    fresh = selectors.with_progress(CollectionRequest.objects.all()).get(pk=request.pk)
    assert body == json.loads(json.dumps(as_json(fresh)))  # the API's JSON, as it stands
    assert body["status"] == "pending" and body["callback_url"] == hook.url
    assert post["headers"]["X-Collections-Event"] == "pending"
    assert post["headers"]["Content-Type"] == "application/json"
    (row,) = attempts(request, 1)
    assert row.status_code == 200 and row.delivered_at is not None and row.attempt == 1
    assert row.body_sha256 == hashlib.sha256(post["raw"]).hexdigest()
    time.sleep(1)
    assert len(hook.posts()) == 1  # delivered once, never again


def test_failed_is_posted_too(
    callback_worker: Callable[..., Any], receiver: Callable[..., Receiver], sandbox: Any
) -> None:
    hook = receiver()
    callback_worker()
    sandbox.state.script.append(
        {"status": 400, "body": {"error": "invalid_param", "error_description": "bad meter"}}
    )
    services.request_collection(["m-1"], callback_url=hook.url)
    (post,) = hook.posts()
    body = verified(post)
    assert (body["status"], body["error"]) == ("failed", "invalid_param")
    assert post["headers"]["X-Collections-Event"] == "failed"


def test_a_500_is_retried_with_backoff_until_delivered(
    callback_worker: Callable[..., Any], receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(500)
    callback_worker()
    request = services.request_collection(["m-1"], callback_url=hook.url)
    first, second = hook.posts(2)
    assert verified(first)["id"] == verified(second)["id"] == str(request.pk)
    delivery = "X-Collections-Delivery"
    assert first["headers"][delivery] == second["headers"][delivery]  # one moment, two tries
    tried = attempts(request, 2)
    assert [(r.attempt, r.status_code, r.error) for r in tried] == [
        (1, 500, "http_500"),
        (2, 200, ""),
    ]
    assert tried[0].delivered_at is None and tried[1].delivered_at is not None
    assert tried[1].tried_at is not None and tried[0].tried_at is not None
    assert (tried[1].tried_at - tried[0].tried_at).total_seconds() >= 0.25  # backed off


def test_a_redirect_is_not_followed(
    callback_worker: Callable[..., Any], receiver: Callable[..., Receiver]
) -> None:
    hook = receiver(302)
    callback_worker()
    request = services.request_collection(["m-1"], callback_url=hook.url)
    posts = hook.posts(2)
    assert [p["path"] for p in posts] == ["/hooks/collections"] * 2  # never /elsewhere
    first, second = attempts(request, 2)[:2]
    assert (first.status_code, first.error) == (302, "redirect_not_followed")
    assert second.delivered_at is not None


def test_a_private_address_is_refused_at_creation_and_at_send_time(
    callback_worker: Callable[..., Any],
    receiver: Callable[..., Receiver],
    settings: Any,
    sandbox: Any,
) -> None:
    hook = receiver()
    callback_worker(COLLECTIONS_CALLBACK_ALLOW_PRIVATE="0")  # the worker refuses loopback
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = False
    with pytest.raises(ValidationError, match="loopback, private or reserved"):
        services.request_collection(["m-1"], callback_url=hook.url)
    assert not CollectionRequest.objects.exists() and not CallbackDelivery.objects.exists()
    # Accepted while allowed here, as if DNS answered otherwise then: the worker checks again.
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = True
    request = services.request_collection(["m-2"], callback_url=hook.url)
    (refused,) = attempts(request, 1)[:1]
    assert (refused.status_code, refused.error) == (None, "address_refused")
    assert "127.0.0.1" in refused.error_description
    assert hook.got == [] and len(sandbox.state.calls) == 1  # the collection itself went


def test_the_collection_outcome_is_posted(
    callback_worker: Callable[..., Any],
    receiver: Callable[..., Receiver],
    live_server: Any,
    sandbox: Any,
    settings: Any,
) -> None:
    settings.UTILITYAPI_WEBHOOK_SECRET = WEBHOOK_SECRET
    sandbox.state.configure(
        webhook_url=live_server.url + "/webhooks/utilityapi/",
        webhook_secret=WEBHOOK_SECRET,
        collection_delay=0.3,
        webhook_retry_seconds=1.0,
    )
    hook = receiver()
    callback_worker(UTILITYAPI_WEBHOOK_SECRET=WEBHOOK_SECRET)
    services.request_collection(["m-1", "m-2"], 12, callback_url=hook.url)
    posts = hook.posts(2, timeout=60)
    events = {p["headers"]["X-Collections-Event"]: verified(p) for p in posts}
    assert set(events) == {"pending", "collection_outcome"}
    assert events["collection_outcome"]["collection_outcome"] == CollectionOutcome.COLLECTED
