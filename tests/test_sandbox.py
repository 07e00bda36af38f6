"""The sandbox's vendor loop: meters moving from pending to updated or errored, the events it
keeps (paging, filters, PATCH), its signed webhook posts and their drop, duplicate and reorder
knobs, GET /meters?uids= and GET /authorizations. Over HTTP against the in-thread server, and
with the clock ticked by hand where an order must be exact."""

from __future__ import annotations

import ast
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import pytest
import requests
from django.core.management import CommandError, call_command

from sandbox import loop
from sandbox.clock import Clock
from sandbox.state import SandboxState

from .conftest import ROOT, wait_until

AUTH = {"Authorization": "Bearer sandbox-token"}
SECRET = "whsec-test"
STAGES = ["started", "progress", "finished_successful"]


def expected_signature(secret: str, salt: str, body: bytes) -> str:
    """Computed here, apart from the sandbox's code: sha256 of "<secret>.<salt>.<body>"."""
    return hashlib.sha256(secret.encode() + b"." + salt.encode() + b"." + body).hexdigest()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Receiver(ThreadingMixIn, WSGIServer):
    """A webhook endpoint on loopback that keeps every post and answers `status`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Quiet)
        self.posts: list[dict[str, Any]] = []
        self.status = "200 OK"
        self.release = threading.Event()
        self.release.set()
        self.set_app(self.app)

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.release.wait(30)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        salt = environ.get("HTTP_X_UTILITYAPI_WEBHOOK_SALT")
        signed = environ.get("HTTP_X_UTILITYAPI_WEBHOOK_SIGNATURE")
        self.posts.append({"body": body, "salt": salt, "signature": signed})
        start_response(self.status, [("Content-Type", "text/plain")])
        return [b"ok"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/webhooks/utilityapi"

    def types(self) -> list[str]:
        return [e["type"] for p in self.posts for e in json.loads(p["body"])["events"]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def post(sandbox: Any, meters: list[str], months: int | None = None) -> requests.Response:
    body: dict[str, Any] = {"meters": meters}
    if months:
        body["collection_duration"] = months
    return requests.post(
        f"{sandbox.url}/meters/historical-collection", json=body, headers=AUTH, timeout=10
    )


def get(sandbox: Any, path: str, **params: Any) -> Any:
    answer = requests.get(f"{sandbox.url}{path}", params=params, headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def hand_ticked(**knobs: Any) -> tuple[SandboxState, Clock, requests.Session]:
    """A state whose clock only moves when the test ticks it."""
    state = SandboxState(**knobs)
    return state, Clock(state), requests.Session()


# --- the collection loop ----------------------------------------------------------------------


def test_accepted_meters_go_pending_then_updated_or_errored(sandbox: Any) -> None:
    sandbox.state.configure(collection_delay=0.5)
    assert post(sandbox, ["m-1", "errored-2", "revoked-3"], months=3).status_code == 200
    pending = get(sandbox, "/meters", uids="m-1,errored-2")["meters"]
    assert [m["status"] for m in pending] == ["pending", "pending"]
    assert pending[0]["status_ts"] and pending[0]["bill_count"] == 0
    wait_until(lambda: sandbox.state.collections == {}, timeout=10)
    done = {m["uid"]: m for m in get(sandbox, "/meters", uids="m-1,errored-2,revoked-3")["meters"]}
    ok, bad = done["m-1"], done["errored-2"]
    assert (ok["status"], ok["bill_count"], ok["interval_count"]) == ("updated", 3, 3 * 30 * 96)
    assert ok["status_ts"] > pending[0]["status_ts"]
    assert [n["type"] for n in ok["notes"]] == ["meters_full"]
    assert (bad["status"], bad["bill_count"], bad["interval_count"]) == ("errored", 0, 0)
    assert bad["status_message"]
    assert done["revoked-3"]["status"] == "updated" and done["revoked-3"]["bill_count"] == 0
    assert get(sandbox, "/meters/m-1") == ok
    oldest_first = list(reversed(get(sandbox, "/events")["events"]))
    stages = {u: [e["type"] for e in oldest_first if e["meter_uid"] == u] for u in done}
    assert stages == {
        "m-1": [f"meter_historical_collection_{s}" for s in STAGES],
        "errored-2": [
            f"meter_historical_collection_{s}" for s in [*STAGES[:2], "finished_errored"]
        ],
        "revoked-3": [],
    }


def test_error_fraction_errs_that_share_of_meters_always_the_same_ones() -> None:
    state, clock, http = hand_ticked(collection_delay=0, error_fraction=0.3)
    uids = [f"m-{i}" for i in range(1000)]
    with state.lock:
        loop.start(state, uids, None, 0.0)
    clock.tick(http, 1.0)
    errored = {u for u in uids if state.finished[u]["status"] == "errored"}
    assert 200 < len(errored) < 400
    again, clock, http = hand_ticked(collection_delay=0, error_fraction=0.3)
    with again.lock:
        loop.start(again, uids, None, 0.0)
    clock.tick(http, 1.0)
    assert {u for u in uids if again.finished[u]["status"] == "errored"} == errored


# --- events -----------------------------------------------------------------------------------


def test_events_are_paged_newest_first_filtered_and_marked_delivered(sandbox: Any) -> None:
    with sandbox.state.lock:
        made = [loop.emit(sandbox.state, "ping", 0.0)["uid"] for _ in range(2500)]
    pages, url = [], f"{sandbox.url}/events?is_delivered=false"
    while url:
        page = requests.get(url, headers=AUTH, timeout=10).json()
        pages.append([e["uid"] for e in page["events"]])
        url = page["next"]
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert [u for p in pages for u in p] == made[::-1]

    uid = made[2490]
    patched = requests.patch(
        f"{sandbox.url}/events/{uid}", json={"is_delivered": True}, headers=AUTH, timeout=10
    )
    assert patched.status_code == 200 and patched.json()["is_delivered"] is True
    assert get(sandbox, f"/events/{uid}")["is_delivered"] is True
    undelivered = get(sandbox, "/events", is_delivered="false", after=made[2485])["events"]
    assert [e["uid"] for e in undelivered] == [made[i] for i in range(2499, 2485, -1) if i != 2490]
    assert [e["uid"] for e in get(sandbox, "/events", is_delivered="true")["events"]] == [uid]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PATCH", "/events/nope", {"is_delivered": True}, 404),
        ("PATCH", "/events/{uid}", {"is_delivered": "yes"}, 400),
        ("PATCH", "/events/{uid}", ["is_delivered"], 400),
        ("GET", "/events?is_delivered=maybe", None, 400),
        ("GET", "/events?after=nope", None, 400),
        ("GET", "/meters?uids=" + ",".join(str(100000 + i) for i in range(1001)), None, 400),
        ("GET", "/events/nope", None, 404),
    ],
)
def test_bad_event_and_meter_calls_are_refused_and_change_nothing(
    sandbox: Any, method: str, path: str, body: Any, status: int
) -> None:
    with sandbox.state.lock:
        uid = loop.emit(sandbox.state, "ping", 0.0)["uid"]
    url = sandbox.url + path.format(uid=uid)
    answer = requests.request(method, url, json=body, headers=AUTH, timeout=10)
    assert answer.status_code == status and answer.json()["error"]
    assert sandbox.state.events[uid]["is_delivered"] is False


@pytest.mark.parametrize("path", ["/events", "/events/x", "/authorizations", "/meters?uids=1"])
def test_every_vendor_endpoint_wants_the_bearer_token(sandbox: Any, path: str) -> None:
    answer = requests.get(sandbox.url + path, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"


# --- meters and authorizations ----------------------------------------------------------------


def test_meters_by_uids_carry_only_their_authorization_uid(sandbox: Any) -> None:
    found = get(sandbox, "/meters", uids="100190,m-1,missing-1,100190")["meters"]
    assert [m["uid"] for m in found] == ["100190", "m-1"]
    assert [m["authorization_uid"] for m in found] == ["5019", "4000"]
    assert all("authorization" not in m for m in get(sandbox, "/meters")["meters"])
    assert "authorization" not in get(sandbox, "/meters/100190")


def test_authorizations_are_paged_in_the_vendors_shape(sandbox: Any) -> None:
    sandbox.state.meter_count = 25000  # 2,500 authorizations, and the 3 of loose uids
    listed, url = [], f"{sandbox.url}/authorizations"
    while url:
        page = requests.get(url, headers=AUTH, timeout=10).json()
        listed += page["authorizations"]
        url = page["next"]
    assert len(listed) == 2503 and len({a["uid"] for a in listed}) == 2503
    by_uid = {a["uid"]: a for a in listed}
    revoked, expired, fine = by_uid["5019"], by_uid["5018"], by_uid["5017"]
    assert (
        revoked["is_revoked"] and revoked["revoked"].startswith("20") and not revoked["is_expired"]
    )
    assert expired["is_expired"] and expired["expires"] < fine["expires"] and not expired["revoked"]
    assert (fine["revoked"], fine["is_revoked"], fine["is_test"], fine["is_declined"]) == (
        None, False, False, False)  # fmt: skip
    assert by_uid["4001"]["is_revoked"] and by_uid["4002"]["is_expired"]
    requests.post(f"{sandbox.url}/_sandbox/revoke", json={"authorizations": [5017]}, timeout=10)
    later = get(sandbox, "/authorizations")["authorizations"][17]
    assert later["is_revoked"] is True
    assert abs(datetime.fromisoformat(later["revoked"]).timestamp() - time.time()) < 60  # now
    assert get(sandbox, "/events")["events"][0]["type"] == "authorization_revoked"


# --- webhooks ---------------------------------------------------------------------------------


def test_webhook_posts_are_signed_and_sent_without_holding_the_post(
    sandbox: Any, receiver: Receiver
) -> None:
    sandbox.state.configure(webhook_url=receiver.url, webhook_secret=SECRET, collection_delay=0.3)
    receiver.release.clear()  # the receiver holds every post until released
    assert post(sandbox, ["m-1"]).status_code == 200  # answered while the webhook waits
    receiver.release.set()
    wait_until(lambda: len(receiver.types()) == 3, timeout=10)
    assert receiver.types() == [f"meter_historical_collection_{s}" for s in STAGES]
    for sent in receiver.posts:
        assert sent["signature"] == expected_signature(SECRET, sent["salt"], sent["body"])
        assert json.loads(sent["body"])["next"] is None
    assert len({p["salt"] for p in receiver.posts}) == 3
    wait_until(lambda: all(e["is_delivered"] for e in sandbox.state.events.values()), timeout=5)
    assert get(sandbox, "/events", is_delivered="false")["events"] == []


def test_the_signature_matches_a_known_vector() -> None:
    from sandbox.webhooks import signature

    body = b'{"events": [], "next": null}'
    assert (
        signature("s3cret", "a1b2", body)
        == hashlib.sha256(b's3cret.a1b2.{"events": [], "next": null}').hexdigest()
    )


def test_indent4_signing_signs_the_four_space_form(receiver: Receiver) -> None:
    state, clock, http = hand_ticked(webhook_url=receiver.url, webhook_secret=SECRET,
                                     webhook_sign="indent4")  # fmt: skip
    with state.lock:
        loop.emit(state, "ping", 0.0)
    clock.tick(http, 0.0)
    sent = receiver.posts[0]
    four_spaces = json.dumps(json.loads(sent["body"]), indent=4).encode()
    assert sent["signature"] == expected_signature(SECRET, sent["salt"], four_spaces)
    assert sent["signature"] != expected_signature(SECRET, sent["salt"], sent["body"])


def test_dropped_posts_never_arrive_and_stay_undelivered(receiver: Receiver) -> None:
    state, clock, http = hand_ticked(webhook_url=receiver.url, webhook_drop=1.0,
                                     collection_delay=0)  # fmt: skip
    with state.lock:
        loop.start(state, ["m-1", "m-2"], None, 0.0)
    clock.tick(http, 1.0)
    clock.tick(http, 1000.0)  # not even a retry
    assert receiver.posts == []
    assert len(state.events) == 6 and not any(e["is_delivered"] for e in state.events.values())
    assert all(entry["dropped"] for entry in state.webhook_log)


def test_duplicated_posts_arrive_twice_byte_for_byte(receiver: Receiver) -> None:
    state, clock, http = hand_ticked(webhook_url=receiver.url, webhook_secret=SECRET,
                                     webhook_duplicate=1.0, webhook_batch=2)  # fmt: skip
    with state.lock:
        for _ in range(3):
            loop.emit(state, "ping", 0.0)
    clock.tick(http, 0.0)
    assert len(receiver.posts) == 4  # two posts (2 + 1 events), each twice
    first, again = receiver.posts[0], receiver.posts[1]
    assert first == again and len(json.loads(first["body"])["events"]) == 2
    assert all(e["is_delivered"] for e in state.events.values())


def test_reordered_rounds_send_finished_before_started(receiver: Receiver) -> None:
    state, clock, http = hand_ticked(webhook_url=receiver.url, webhook_reorder=True,
                                     webhook_batch=1, collection_delay=0)  # fmt: skip
    with state.lock:
        loop.start(state, ["m-1"], None, 0.0)
    clock.tick(http, 1.0)
    assert receiver.types() == [f"meter_historical_collection_{s}" for s in reversed(STAGES)]


def test_a_refused_post_is_sent_again_later_then_given_up(receiver: Receiver) -> None:
    state, clock, http = hand_ticked(webhook_url=receiver.url, webhook_retry_seconds=60)
    receiver.status = "500 Internal Server Error"
    with state.lock:
        uid = loop.emit(state, "ping", 0.0)["uid"]
    clock.tick(http, 0.0)
    clock.tick(http, 30.0)  # not due yet
    assert len(receiver.posts) == 1
    clock.tick(http, 61.0)
    clock.tick(http, 200.0)
    clock.tick(http, 500.0)  # three tries in all
    assert len(receiver.posts) == 3 and state.outbox == []
    assert state.events[uid]["is_delivered"] is False
    receiver.status = "200 OK"
    with state.lock:
        later = loop.emit(state, "ping", 600.0)["uid"]
    clock.tick(http, 600.0)
    assert state.events[later]["is_delivered"] is True


# --- knobs ------------------------------------------------------------------------------------


def test_config_refuses_bad_knobs_and_keeps_the_old_values(sandbox: Any) -> None:
    bad_knobs = [
        {"rate": -1},
        {"webhook_drop": 2},
        {"webhook_url": "ftp://x"},
        {"nope": 1},
        {"webhook_sign": "md5"},
        {"latency_ms": 5, "webhook_reorder": "no"},
    ]
    for bad in bad_knobs:
        answer = requests.post(f"{sandbox.url}/_sandbox/config", json=bad, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"]
    knobs = requests.get(f"{sandbox.url}/_sandbox/config", timeout=10).json()
    assert (knobs["rate"], knobs["latency_ms"], knobs["webhook_reorder"]) == (0, 0, False)


def test_the_command_refuses_bad_flags() -> None:
    with pytest.raises(CommandError, match="webhook_drop must be from 0 to 1"):
        call_command("utilityapi_sandbox", "--webhook-drop", "1.5")
    with pytest.raises(CommandError, match="rate must be at least 0"):
        call_command("utilityapi_sandbox", "--rate", "-2")


def test_the_product_never_imports_the_sandbox() -> None:
    importers = []
    for path in (ROOT / "collections_app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "sandbox" or n.startswith("sandbox.") for n in names):
                importers.append(str(path.relative_to(ROOT)))
    assert importers == []
