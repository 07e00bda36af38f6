"""Callbacks without a worker: the signature, the URL rules (SSRF), what is stored with a
transition or an outcome, the signal, the outbox's claim and retry bookkeeping."""

from __future__ import annotations

import hashlib
import socket
import threading
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from collections_app import callbacks, services
from collections_app.callbacks import Answer
from collections_app.client import Accepted
from collections_app.exceptions import PermanentError
from collections_app.models import CallbackDelivery, CollectionRequest, Moment, Status
from collections_app.services import callbacks as outbox
from collections_app.services import leases, outcomes, tracking
from collections_app.signals import request_resolved
from collections_app.validation import clean_callback_url

pytestmark = pytest.mark.django_db
SECRET = "unit-callback-secret"
PUBLIC = "https://93.184.216.34/hooks/collections"  # an IP literal: no DNS needed


@pytest.fixture(autouse=True)
def callback_settings(settings: Any) -> Any:
    settings.COLLECTIONS_CALLBACK_SECRET = SECRET
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = False
    settings.DEBUG = False
    settings.COLLECTIONS_BATCH_MAX_METERS = 1  # a claim takes one request (no coalescing)
    return settings


def hmac_sha256(key: bytes, message: bytes) -> str:
    """RFC 2104 by hand (not the hmac module), to check callbacks.signature independently."""
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(k ^ 0x36 for k in key) + message).digest()
    return hashlib.sha256(bytes(k ^ 0x5C for k in key) + inner).hexdigest()


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"r-1","status":"pending"}'
    expected = hmac_sha256(b"whsec-test", b"1767225600." + body)
    assert callbacks.signature(body, "whsec-test", 1767225600) == f"t=1767225600,v1={expected}"
    # A published HMAC-SHA256 vector (RFC 4231, test case 2) through the same hand-made HMAC.
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert callbacks.signature(body, "other", 1767225600) != f"t=1767225600,v1={expected}"


def test_a_public_https_url_is_taken_and_none_is_no_callback() -> None:
    assert clean_callback_url(PUBLIC) == PUBLIC
    assert clean_callback_url(None) is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://93.184.216.34/cb", "absolute https URL"),
        ("ftp://93.184.216.34/cb", "absolute https URL"),
        ("/relative/path", "absolute https URL"),
        ("https://user:pw@93.184.216.34/cb", "user name or password"),
        ("https://user@93.184.216.34/cb", "user name or password"),
        ("https://93.184.216.34:99999/cb", "not a valid URL"),
        ("https://93.184.216.34/a b", "printable ASCII"),
        ("https://93.184.216.34/" + "a" * 2000, "1 to 2000 characters"),
        ("https://127.0.0.1/cb", "resolves to 127.0.0.1"),
        ("https://localhost/cb", "loopback, private or reserved"),
        ("https://10.1.2.3/cb", "resolves to 10.1.2.3"),
        ("https://172.16.0.9/cb", "resolves to 172.16.0.9"),
        ("https://192.168.1.1/cb", "resolves to 192.168.1.1"),
        ("https://169.254.169.254/latest/meta-data", "resolves to 169.254.169.254"),
        ("https://100.64.0.1/cb", "resolves to 100.64.0.1"),
        ("https://0.0.0.0/cb", "resolves to 0.0.0.0"),
        ("https://224.0.0.1/cb", "resolves to 224.0.0.1"),
        ("https://[::1]/cb", "resolves to ::1"),
        ("https://[fe80::1]/cb", "resolves to fe80::1"),
        ("https://[fd00::1]/cb", "resolves to fd00::1"),
        ("https://[::ffff:127.0.0.1]/cb", "resolves to ::ffff:127.0.0.1"),
        ("https://[64:ff9b::a00:1]/cb", "resolves to 64:ff9b::a00:1"),  # NAT64 of 10.0.0.1
        ("https://[2002:c0a8:101::1]/cb", "resolves to 2002:c0a8:101::1"),  # 6to4 192.168.1.1
        ("https://no-such-host.invalid/cb", "does not resolve"),
        (12, "1 to 2000 characters"),
        ("", "1 to 2000 characters"),
    ],
)
def test_refused_callback_urls_name_the_reason(url: Any, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        clean_callback_url(url)
    (error,) = caught.value.error_dict["callback_url"]
    assert error.code == "invalid_param" and "callback_url" in error.message
    assert says in error.message


def test_http_is_taken_in_development_only(settings: Any) -> None:
    settings.DEBUG = True
    assert clean_callback_url("http://93.184.216.34/cb") == "http://93.184.216.34/cb"


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:8443/cb", "https://[::1]/cb", "https://10.0.0.5/cb"]
)
def test_private_addresses_are_taken_when_allowed(settings: Any, url: str) -> None:
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = True
    assert clean_callback_url(url) == url


def test_without_a_secret_a_callback_url_is_refused_and_nothing_stored(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.COLLECTIONS_CALLBACK_SECRET = ""
    with django_capture_on_commit_callbacks() as hooks, pytest.raises(ValidationError) as caught:
        services.request_collection(["m-1"], callback_url=PUBLIC)
    assert "COLLECTIONS_CALLBACK_SECRET" in caught.value.error_dict["callback_url"][0].message
    assert not CollectionRequest.objects.exists() and hooks == []
    assert services.request_collection(["m-1"]).callback_url is None  # none asked: fine


def test_a_refused_callback_url_stores_nothing(django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as hooks, pytest.raises(ValidationError):
        services.request_collection(["m-1"], callback_url="https://192.168.0.10/cb")
    assert not CollectionRequest.objects.exists() and not CallbackDelivery.objects.exists()
    assert hooks == []


def test_idempotent_retry_with_another_callback_url_is_refused(django_user_model: Any) -> None:
    user = django_user_model.objects.create(username="app")
    first = services.request_collection(
        ["m-1"], requested_by=user, callback_url=PUBLIC, idempotency_key="k"
    )
    again = services.request_collection(
        ["m-1"], requested_by=user, callback_url=PUBLIC, idempotency_key="k"
    )
    assert again.pk == first.pk
    with pytest.raises(ValidationError) as caught:
        services.request_collection(["m-1"], requested_by=user, idempotency_key="k")
    assert "callback_url" in caught.value.error_dict["idempotency_key"][0].message


# --- what a transition stores, and the signal ------------------------------------------------


def accepted(meters: list[str]) -> Accepted:
    return Accepted(meters=meters, collection_duration=None)


def claimed(request: CollectionRequest) -> list[CollectionRequest]:
    return leases.claim(request.pk, "task-1")


def call() -> outcomes.Call:
    return outcomes.Call(uuid.uuid4(), timezone.now(), 12, "task-1")


def record(batch: list[CollectionRequest], outcome: Any, hooks: Any) -> None:
    with hooks(execute=True):
        outcomes.record_outcome(batch, outcome, call())


@pytest.fixture
def heard() -> Any:
    """The request_resolved signals received, as (id, status) pairs."""
    seen: list[tuple[Any, str]] = []

    def receiver(sender: CollectionRequest, **kwargs: Any) -> None:
        seen.append((sender.pk, sender.status))

    request_resolved.connect(receiver, weak=False)
    yield seen
    request_resolved.disconnect(receiver)


def test_pending_stores_a_due_attempt_and_signals_once_after_commit(
    django_capture_on_commit_callbacks: Any, heard: Any
) -> None:
    request = services.request_collection(["m-1", "m-2"], callback_url=PUBLIC)
    plain = services.request_collection(["m-3"])
    record(claimed(request), accepted(["m-1", "m-2"]), django_capture_on_commit_callbacks)
    record(claimed(plain), accepted(["m-3"]), django_capture_on_commit_callbacks)
    assert heard == [(request.pk, Status.PENDING), (plain.pk, Status.PENDING)]
    (delivery,) = CallbackDelivery.objects.all()
    assert (delivery.request_id, delivery.moment, delivery.attempt) == (request.pk, "pending", 1)
    assert delivery.tried_at is None and delivery.next_attempt_at <= timezone.now()


def test_a_shared_post_asks_for_one_sending_task(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 10
    first = services.request_collection(["m-1"], callback_url=PUBLIC)
    for meter in ["m-2", "m-3"]:
        services.request_collection([meter], callback_url=PUBLIC)
    batch = leases.claim(first.pk, "task-1")
    assert len(batch) == 3
    with django_capture_on_commit_callbacks() as hooks:
        outcomes.record_outcome(batch, accepted(["m-1", "m-2", "m-3"]), call())
    assert CallbackDelivery.objects.count() == 3
    assert sum(hook is outbox.kick for hook in hooks) == 1


def test_failed_and_retried_again_is_told_each_time(
    django_capture_on_commit_callbacks: Any, heard: Any
) -> None:
    request = services.request_collection(["m-1"], callback_url=PUBLIC)
    refused = PermanentError("invalid_param", "bad", status_code=400)
    record(claimed(request), refused, django_capture_on_commit_callbacks)
    services.retry_failed([request])  # back to submitted: nobody is told
    record(claimed(request), accepted(["m-1"]), django_capture_on_commit_callbacks)
    assert heard == [(request.pk, Status.FAILED), (request.pk, Status.PENDING)]
    moments = CallbackDelivery.objects.order_by("created").values_list("moment", flat=True)
    assert list(moments) == ["failed", "pending"]


def test_a_transition_rolled_back_tells_nobody(
    django_capture_on_commit_callbacks: Any, heard: Any
) -> None:
    from django.db import transaction

    request = services.request_collection(["m-1"], callback_url=PUBLIC)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        outcomes.record_outcome(claimed(request), accepted(["m-1"]), call())
        raise RuntimeError("the database went away")
    assert heard == [] and not CallbackDelivery.objects.exists()


def test_a_worker_that_lost_its_lease_tells_nobody(
    settings: Any, django_capture_on_commit_callbacks: Any, heard: Any
) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 10
    request = services.request_collection(["m-1"], callback_url=PUBLIC)
    other = services.request_collection(["m-2"], callback_url=PUBLIC)
    batch = leases.claim(request.pk, "task-1")
    assert len(batch) == 2  # coalesced
    CollectionRequest.objects.filter(pk=other.pk).update(lease_token=uuid.uuid4())  # taken over
    record(batch, accepted(["m-1", "m-2"]), django_capture_on_commit_callbacks)
    assert heard == [(request.pk, Status.PENDING)]
    assert list(CallbackDelivery.objects.values_list("request_id", flat=True)) == [request.pk]
    (alone,) = leases.claim(services.request_collection(["m-3"], callback_url=PUBLIC).pk, "t")
    CollectionRequest.objects.filter(pk=alone.pk).update(lease_token=uuid.uuid4())
    record([alone], accepted(["m-3"]), django_capture_on_commit_callbacks)
    assert len(heard) == 1 and CallbackDelivery.objects.count() == 1


def test_a_transition_outside_a_transaction_is_refused() -> None:
    from django.db import connection

    from collections_app.services.transitions import transition

    request = CollectionRequest(meters=["m"], status=Status.SUBMITTED)
    connection.in_atomic_block, saved = False, connection.in_atomic_block
    try:
        with pytest.raises(RuntimeError, match=r"transaction\.atomic"):
            transition(request, Status.FAILED)
    finally:
        connection.in_atomic_block = saved


def test_the_collection_outcome_stores_an_attempt_with_it(
    django_capture_on_commit_callbacks: Any,
) -> None:
    request = services.request_collection(["m-1"], callback_url=PUBLIC)
    plain = services.request_collection(["m-2"])
    record(claimed(request), accepted(["m-1"]), django_capture_on_commit_callbacks)
    record(claimed(plain), accepted(["m-2"]), django_capture_on_commit_callbacks)
    request.meter_progress.update(result="successful")
    plain.meter_progress.update(result="successful")
    assert set(tracking.settle([request.pk, plain.pk])) == {request.pk, plain.pk}
    moments = CallbackDelivery.objects.filter(request=request).values_list("moment", flat=True)
    assert sorted(moments) == ["collection_outcome", "pending"]
    assert not CallbackDelivery.objects.filter(request=plain).exists()


# --- the outbox ----------------------------------------------------------------------------


def stored_attempt() -> CallbackDelivery:
    request = services.request_collection(["m-1"], callback_url=PUBLIC)
    outbox.queue([request.pk], Moment.PENDING)
    return CallbackDelivery.objects.get()


def test_an_attempt_is_claimed_once() -> None:
    row = stored_attempt()
    first = outbox.claim()
    assert first is not None and first.pk == row.pk and first.lease_expires_at is not None
    assert outbox.claim() is None  # leased: no second worker sends it
    assert outbox.seconds_until_next_due() is None  # nor is a follow-up asked for it
    CallbackDelivery.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    again = outbox.claim()  # the first worker died holding it
    assert again is not None and again.pk == row.pk


def test_a_failed_attempt_stores_the_next_with_backoff(settings: Any) -> None:
    settings.COLLECTIONS_CALLBACK_RETRY_BASE_SECONDS = 10
    row = stored_attempt()
    claimed_row = outbox.claim()
    assert claimed_row is not None
    outbox.record(claimed_row, Answer(500, "http_500", "answered 500", 8), "ab" * 32)
    first, second = CallbackDelivery.objects.order_by("attempt")
    assert (first.status_code, first.tried_at is not None, first.delivered_at) == (500, True, None)
    assert second.attempt == 2 and second.event_id == row.event_id and second.tried_at is None
    assert 5 <= (second.next_attempt_at - first.tried_at).total_seconds() <= 10.01
    outbox.record(claimed_row, Answer(200, "", "", 5), "cd" * 32)  # recorded already: ignored
    assert CallbackDelivery.objects.count() == 2


def test_backoff_doubles_with_jitter_up_to_an_hour(settings: Any) -> None:
    settings.COLLECTIONS_CALLBACK_RETRY_BASE_SECONDS = 10
    for attempt, step in [(1, 10), (2, 20), (5, 160), (30, 3600)]:
        waits = [outbox.backoff(attempt) for _ in range(50)]
        assert all(step / 2 <= w <= step for w in waits)
        assert len(set(waits)) > 1


def test_it_gives_up_a_day_after_the_moment(settings: Any) -> None:
    row = stored_attempt()
    a_day_ago = timezone.now() - timedelta(seconds=settings.COLLECTIONS_CALLBACK_GIVE_UP_SECONDS)
    CallbackDelivery.objects.update(moment_at=a_day_ago)
    claimed_row = outbox.claim()
    assert claimed_row is not None and claimed_row.pk == row.pk
    outbox.record(claimed_row, Answer(None, "timeout", "no answer", 5000), "")
    (last,) = CallbackDelivery.objects.all()
    assert last.gave_up and last.error == "timeout" and outbox.claim() is None


def test_a_delivered_attempt_is_the_last() -> None:
    stored_attempt()
    claimed_row = outbox.claim()
    assert claimed_row is not None
    outbox.record(claimed_row, Answer(204, "", "", 3), "ef" * 32)
    (row,) = CallbackDelivery.objects.all()
    assert row.delivered_at is not None and not row.gave_up and row.body_sha256 == "ef" * 32
    assert outbox.seconds_until_next_due() is None


# --- sending ---------------------------------------------------------------------------------


class Receiver:
    """A loopback HTTP server answering every POST with `status`; it records what came."""

    def __init__(self, status: int = 200, body: bytes = b"ok") -> None:
        self.posts: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.posts.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(status)
                self.send_header("Location", "/elsewhere")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/cb"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_post_to_a_private_address_is_refused_at_send_time_too(settings: Any) -> None:
    receiver = Receiver()
    try:
        answer = callbacks.post(receiver.url, b"{}", {})
        assert (answer.status_code, answer.error) == (None, "address_refused")
        assert receiver.posts == []  # no connection was made
        settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = True
        assert callbacks.post(receiver.url, b"{}", {}).delivered
        assert receiver.posts == [b"{}"]
    finally:
        receiver.close()


def test_a_huge_answer_is_read_only_in_part_and_a_redirect_is_not_followed(
    settings: Any,
) -> None:
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = True
    receiver = Receiver(status=302, body=b"x" * 10_000_000)
    try:
        answer = callbacks.post(receiver.url, b"{}", {})
        assert (answer.status_code, answer.error) == (302, "redirect_not_followed")
        assert not answer.delivered and len(receiver.posts) == 1
    finally:
        receiver.close()


def test_a_receiver_that_does_not_answer_times_out(settings: Any, monkeypatch: Any) -> None:
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = True
    monkeypatch.setattr(callbacks, "READ_TIMEOUT", 0.3)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        answer = callbacks.post(f"http://127.0.0.1:{silent.getsockname()[1]}/", b"{}", {})
        assert (answer.status_code, answer.error) == (None, "timeout")
        assert answer.duration_ms < 3000
    finally:
        silent.close()


# --- the API ---------------------------------------------------------------------------------


@pytest.fixture
def api(django_user_model: Any) -> Any:
    from django.contrib.auth.models import Permission
    from django.test import Client

    from collections_app.services import tokens

    user = django_user_model.objects.create_user("web-app")
    user.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_collectionrequest", "add_collectionrequest", "trigger_collection"]
        )
    )
    _, raw = tokens.issue(user)
    return Client(headers={"Authorization": f"Bearer {raw}"})


def test_the_api_takes_a_callback_url_and_shows_it(api: Any) -> None:
    answer = api.post(
        "/api/collections/", {"meters": ["m-1"], "callback_url": PUBLIC}, "application/json"
    )
    assert answer.status_code == 202, answer.content
    assert answer.json()["callback_url"] == PUBLIC
    assert CollectionRequest.objects.get().callback_url == PUBLIC
    plain = api.post("/api/collections/", {"meters": ["m-2"]}, "application/json").json()
    assert plain["callback_url"] is None
    assert api.get(f"/api/collections/{answer.json()['id']}/").json()["callback_url"] == PUBLIC


@pytest.mark.parametrize(
    "url", ["https://10.0.0.1/cb", "http://93.184.216.34/cb", "https://u:p@93.184.216.34/", 7]
)
def test_the_api_refuses_a_bad_callback_url_and_stores_nothing(api: Any, url: Any) -> None:
    answer = api.post(
        "/api/collections/", {"meters": ["m-1"], "callback_url": url}, "application/json"
    )
    assert answer.status_code == 400
    body = answer.json()
    assert (body["error"], body["field"]) == ("invalid_param", "callback_url")
    assert body["error_description"].startswith("callback_url ")
    assert not CollectionRequest.objects.exists() and not CallbackDelivery.objects.exists()


# --- the admin -------------------------------------------------------------------------------


def test_the_admin_shows_every_attempt_read_only(admin_client: Any) -> None:
    row = stored_attempt()
    claimed_row = outbox.claim()
    assert claimed_row is not None
    outbox.record(claimed_row, Answer(503, "http_503", "answered 503", 40), "ab" * 32)
    page = admin_client.get(f"/admin/collections_app/collectionrequest/{row.request_id}/change/")
    html = page.content.decode()
    assert page.status_code == 200 and 'id="request-callbacks"' in html
    assert "answered 503" in html and html.count("Reached pending") == 2  # two attempts
    listing = admin_client.get(f"/admin/collections_app/callbackdelivery/?q={row.request_id}")
    assert listing.content.decode().count('class="field-request_link"') == 2
    nothing = admin_client.get("/admin/collections_app/callbackdelivery/?q=not-a-uuid")
    assert nothing.status_code == 200
    assert 'class="field-request_link"' not in nothing.content.decode()
    detail = admin_client.get(f"/admin/collections_app/callbackdelivery/{row.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()


def test_deploy_check_warns_of_private_callbacks_outside_development(settings: Any) -> None:
    from collections_app.checks import callbacks_to_private_addresses

    assert callbacks_to_private_addresses() == []
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = True
    (warning,) = callbacks_to_private_addresses()
    assert warning.id == "collections.W001"
    settings.DEBUG = True
    assert callbacks_to_private_addresses() == []
