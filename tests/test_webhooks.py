"""POST /webhooks/utilityapi/: signature, size and shape checks before anything is stored."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from typing import Any

import pytest

from collections_app.models import Event, EventSource
from collections_app.webhooks import SALT_HEADER, SIGNATURE_HEADER, signature, signature_matches

URL = "/webhooks/utilityapi/"
SECRET = "whsec-test"

# Known vectors, computed outside this code base with
#   printf '%s' 'whsec-test.salt-1234.{"events": [], "next": null}' | openssl dgst -sha256
# and, for the 4-space re-serialisation, over "whsec-test.salt-9." + json.dumps(..., indent=4)
# of RAW_COMPACT (the bytes are spelt out in INDENTED below).
VECTOR_BODY = b'{"events": [], "next": null}'
VECTOR_DIGEST = "d35495f7224ce7f23819e895d1134b577672c9946c96f5862800367a6328d1fe"
RAW_COMPACT = b'{"events":[{"uid":"ev-1","type":"ping","ts":"2026-01-01T00:00:00Z"}],"next":null}'
INDENTED = (
    b'{\n    "events": [\n        {\n            "uid": "ev-1",\n            "type": "ping",\n'
    b'            "ts": "2026-01-01T00:00:00Z"\n        }\n    ],\n    "next": null\n}'
)
INDENTED_DIGEST = "ab24d4266d5604f09deeebe2462a6b54ffa3e4ceba98c01eb534e1ebcc007e75"


@pytest.fixture
def secret(settings: Any) -> str:
    settings.UTILITYAPI_WEBHOOK_SECRET = SECRET
    return SECRET


def post(
    client: Any, raw: bytes, *, salt: str = "salt-1", sig: str | None = None, **extra: Any
) -> Any:
    headers = {SALT_HEADER: salt, SIGNATURE_HEADER: sig or signature(SECRET, salt, raw)}
    headers.update(extra)
    return client.post(URL, data=raw, content_type="application/json", headers=headers)


def body(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events), "next": None}).encode()


def meter_event(uid: str, stage: str = "started", meter: str = "m-1") -> dict[str, Any]:
    return {
        "uid": uid,
        "type": f"meter_historical_collection_{stage}",
        "ts": "2026-01-01T00:00:00Z",
        "meter_uid": meter,
        "authorization_uid": "a-1",
        "is_delivered": False,
    }


# --- the signature ----------------------------------------------------------------------------


def test_signature_matches_the_known_vector() -> None:
    assert signature(SECRET, "salt-1234", VECTOR_BODY) == VECTOR_DIGEST
    assert hashlib.sha256(b"whsec-test.salt-1234." + VECTOR_BODY).hexdigest() == VECTOR_DIGEST
    assert signature_matches(SECRET, "salt-1234", VECTOR_BODY, VECTOR_DIGEST)
    assert signature_matches(SECRET, "salt-1234", VECTOR_BODY, VECTOR_DIGEST.upper())
    assert not signature_matches(SECRET, "salt-1235", VECTOR_BODY, VECTOR_DIGEST)
    assert not signature_matches("other", "salt-1234", VECTOR_BODY, VECTOR_DIGEST)


def test_signature_of_the_indented_body_is_accepted() -> None:
    assert json.dumps(json.loads(RAW_COMPACT), indent=4).encode() == INDENTED
    assert signature(SECRET, "salt-9", RAW_COMPACT) != INDENTED_DIGEST
    assert signature_matches(SECRET, "salt-9", RAW_COMPACT, INDENTED_DIGEST)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_signature_agrees_with_openssl() -> None:
    raw = body(meter_event("ev-openssl"))
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-r"],
        input=b"whsec-test.salt-x." + raw,
        capture_output=True,
        check=True,
    ).stdout.split()[0]
    assert signature(SECRET, "salt-x", raw) == out.decode()


# --- the endpoint ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_off_without_a_secret(client: Any, settings: Any) -> None:
    settings.UTILITYAPI_WEBHOOK_SECRET = ""
    response = post(client, body(meter_event("ev-1")))
    assert response.status_code == 404
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_stores_each_event_once(client: Any, secret: str) -> None:
    raw = body(meter_event("ev-1"), {"uid": "ev-2", "type": "brand_new_type", "ts": "garbage"})
    response = post(client, raw)
    assert response.status_code == 200 and response.json() == {"received": 2}
    events = {e.uid: e for e in Event.objects.all()}
    assert set(events) == {"ev-1", "ev-2"}
    assert events["ev-1"].meter_uid == "m-1" and events["ev-1"].via == EventSource.WEBHOOK
    assert events["ev-1"].ts is not None and events["ev-1"].processed_at is None
    assert events["ev-2"].type == "brand_new_type" and events["ev-2"].ts is None
    assert events["ev-2"].raw["ts"] == "garbage"  # kept as it came


@pytest.mark.django_db
def test_a_replayed_post_changes_nothing(client: Any, secret: str) -> None:
    raw = body(meter_event("ev-1"))
    assert post(client, raw).status_code == 200
    before = list(Event.objects.values())
    assert post(client, raw, salt="salt-1").status_code == 200
    assert list(Event.objects.values()) == before


@pytest.mark.django_db
def test_repeated_event_in_one_post_is_stored_once(client: Any, secret: str) -> None:
    assert post(client, body(meter_event("ev-1"), meter_event("ev-1"))).status_code == 200
    assert Event.objects.count() == 1


@pytest.mark.django_db
def test_indented_signature_accepted(client: Any, secret: str) -> None:
    response = post(client, RAW_COMPACT, salt="salt-9", sig=INDENTED_DIGEST)
    assert response.status_code == 200
    assert Event.objects.get().uid == "ev-1"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "headers",
    [
        {SIGNATURE_HEADER: "0" * 64},  # forged
        {SIGNATURE_HEADER: signature("wrong-secret", "salt-1", body(meter_event("ev-1")))},
        {SIGNATURE_HEADER: ""},  # unsigned
        {SALT_HEADER: ""},  # no salt
        {SALT_HEADER: "salt-2"},  # signed with another salt
    ],
)
def test_bad_signature_is_refused(client: Any, secret: str, headers: dict[str, str]) -> None:
    response = post(client, body(meter_event("ev-1")), **headers)
    assert response.status_code == 403
    assert response.json()["error"] == "invalid_signature"
    assert not Event.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"next": null}',
        b'{"events": {"uid": "x"}}',
        b'{"events": ["x"]}',
        b'{"events": [{"type": "ping"}]}',  # no uid
        b'{"events": [{"uid": "", "type": "ping"}]}',
        b'{"events": [{"uid": 5, "type": "ping"}]}',
        b'{"events": [{"uid": "ev-1"}]}',  # no type
        b'{"events": [{"uid": "ev-1", "type": "ping"}, {"uid": "ev-2"}]}',  # one bad: none kept
        b"\xff\xfe",
    ],
)
def test_malformed_body_is_refused(client: Any, secret: str, raw: bytes) -> None:
    response = post(client, raw)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_oversized_body_is_refused(client: Any, secret: str, settings: Any) -> None:
    settings.COLLECTIONS_WEBHOOK_MAX_BODY_BYTES = 200
    raw = body(*(meter_event(f"ev-{i}") for i in range(5)))
    assert len(raw) > 200
    response = post(client, raw)
    assert response.status_code == 413
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_only_post(client: Any, secret: str) -> None:
    assert client.get(URL).status_code == 405
