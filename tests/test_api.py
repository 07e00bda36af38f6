"""The JSON API through Django's test client, against PostgreSQL.

"Nothing sent" is checked on the queue itself: the stored row is the record of work to do
(a relay in the workers announces it), so no row means nothing is sent; the web process never
publishes to the broker (checked on the real broker's list).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone
from django.utils.crypto import get_random_string

from collections_app import services
from collections_app.api.errors import RequestTooLarge
from collections_app.api.parsers import BoundedJSONParser
from collections_app.api.serializers import FIELDS, UID_PATTERN
from collections_app.models import ApiToken, CollectionRequest, Status
from collections_app.services import broker, tokens
from collections_app.validation import clean_meters

pytestmark = pytest.mark.django_db

URL = "/api/collections/"
VIEW = "view_collectionrequest"
ADD = "add_collectionrequest"
TRIGGER = "trigger_collection"


@pytest.fixture
def make_user(django_user_model: Any) -> Callable[..., Any]:
    def make(username: str, *codenames: str, **fields: Any) -> Any:
        user = django_user_model.objects.create_user(
            username, **fields
        )  # no password: no slow hashing
        user.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label="collections_app", codename__in=codenames
            )
        )
        return user

    return make


@pytest.fixture
def user(make_user: Callable[..., Any]) -> Any:
    return make_user("web-app", VIEW, ADD, TRIGGER)


def client_for(user: Any) -> Client:
    """A client sending a fresh API token of `user`."""
    _, raw = tokens.issue(user)
    return Client(headers={"Authorization": f"Bearer {raw}"})


@pytest.fixture
def api(user: Any) -> Client:
    return client_for(user)


def post(client: Client, body: Any, **headers: str) -> Any:
    """POST `body` (JSON-encoded unless already a str or bytes)."""
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, raw, content_type="application/json", headers=headers)


@pytest.fixture
def nothing_happens(django_capture_on_commit_callbacks: Any) -> Any:
    """Asserts, after the test, that no request was stored and nothing was enqueued."""
    before = CollectionRequest.objects.count()
    with django_capture_on_commit_callbacks() as callbacks:
        yield
    assert CollectionRequest.objects.count() == before
    assert callbacks == []


def assert_error(response: Any, status: int, error: str, mentions: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert mentions in body["error_description"]
    return body


# --- POST ------------------------------------------------------------------------------------


def test_post_stores_enqueues_and_answers_202_with_location(
    api: Client, user: Any, redis_db: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post(api, {"meters": ["m-1", "m-2"], "collection_duration": 12})
    assert response.status_code == 202
    body = response.json()
    assert list(body) == FIELDS
    stored = CollectionRequest.objects.get()
    assert body["id"] == str(stored.pk)
    assert (body["status"], body["meters"], body["collection_duration"]) == (
        "submitted",
        ["m-1", "m-2"],
        12,
    )
    assert (stored.source, stored.requested_by) == ("api", user)
    assert response["Location"] == f"http://testserver/api/collections/{stored.pk}/"
    assert "Idempotent-Replayed" not in response
    assert callbacks == [] and redis_db.llen("celery") == 0  # the caller publishes nothing
    assert stored.announced_at is None and stored.next_attempt_at <= timezone.now()
    assert broker.announce_due()[0] == 1  # a relay's round: one message for its one POST
    assert redis_db.llen("celery") == 1
    assert api.get(response["Location"]).json() == body


def test_duration_may_be_omitted_or_null(api: Client) -> None:
    assert post(api, {"meters": ["m-1"]}).json()["collection_duration"] is None
    assert post(api, {"meters": ["m-2"], "collection_duration": None}).status_code == 202


BAD_BODIES = [
    ({}, "required_param_missing", "meters"),
    ({"meters": []}, "required_param_missing", "meters"),
    ({"meters": None}, "required_param_missing", "meters"),
    ({"collection_duration": 12}, "required_param_missing", "meters"),
    ({"meters": "m-1"}, "invalid_param", "meters"),
    ({"meters": {"uid": "m-1"}}, "invalid_param", "meters"),
    ({"meters": [1]}, "invalid_param", "1st meter"),
    ({"meters": ["m-1", None]}, "invalid_param", "2nd meter"),
    ({"meters": ["m-1", "m-1"]}, "invalid_param", "more than once"),
    ({"meters": ["m 1"]}, "invalid_param", "1st meter"),
    ({"meters": [" "]}, "invalid_param", "1st meter"),
    ({"meters": ["x" * 65]}, "invalid_param", "1st meter"),
    ({"meters": ["m-1"], "collection_duration": True}, "invalid_param", "collection_duration"),
    ({"meters": ["m-1"], "collection_duration": 12.0}, "invalid_param", "collection_duration"),
    ({"meters": ["m-1"], "collection_duration": 12.5}, "invalid_param", "collection_duration"),
    ({"meters": ["m-1"], "collection_duration": "12"}, "invalid_param", "collection_duration"),
    ({"meters": ["m-1"], "collection_duration": 0}, "invalid_param", "collection_duration"),
    ({"meters": ["m-1"], "collection_duration": 37}, "invalid_param", "collection_duration"),
    ({"meters": ["m-1"], "collection_duration": [12]}, "invalid_param", "collection_duration"),
    ({"meters": ["m-1"], "duration": 12}, "invalid_param", "'duration'"),
    ({"meters": ["m-1"], "source": "admin"}, "invalid_param", "'source'"),
    ([], "invalid_json", "JSON object"),
    ([{"meters": ["m-1"]}], "invalid_json", "JSON object"),
    ("null", "invalid_json", "JSON object"),
    ('"m-1"', "invalid_json", "JSON object"),
    ("12", "invalid_json", "JSON object"),
    ('{"meters": ["m-1"', "invalid_json", "not valid JSON"),
    ("{'meters': ['m-1']}", "invalid_json", "not valid JSON"),
    ('{"meters": ["m-1"], "collection_duration": NaN}', "invalid_json", "NaN"),
    ('{"meters": ["m-1"], "collection_duration": 1e999}', "invalid_param", "collection_duration"),
    ('{"meters": ["m-1"]} trailing', "invalid_json", "not valid JSON"),
    ("[" * 100_000, "invalid_json", "nested too deeply"),
    (b'{"meters": ["\xff"]}', "invalid_json", "not valid JSON"),
    ('{"meters": ["m-\\ud800"]}', "invalid_param", "1st meter"),  # a lone surrogate: no text
]


@pytest.mark.parametrize(("body", "error", "mentions"), BAD_BODIES)
def test_bad_input_is_400_and_nothing_is_stored_or_sent(
    api: Client, nothing_happens: None, body: Any, error: str, mentions: str
) -> None:
    assert_error(post(api, body), 400, error, mentions)


def test_a_field_error_names_the_field(api: Client, nothing_happens: None) -> None:
    body = assert_error(
        post(api, {"meters": ["m-1"], "collection_duration": 40}), 400, "invalid_param"
    )
    assert body["field"] == "collection_duration"
    assert body["error_description"] == "collection_duration must be from 1 to 36 months, not 40."
    assert post(api, {"meters": ["m-1"], "x": 1}).json()["field"] == "x"


def test_empty_body_lacks_meters(api: Client, nothing_happens: None) -> None:
    assert_error(post(api, ""), 400, "required_param_missing", "meters")


def test_too_many_meters(api: Client, settings: Any, nothing_happens: None) -> None:
    settings.COLLECTIONS_MAX_METERS_PER_REQUEST = 3
    assert_error(post(api, {"meters": ["a", "b", "c", "d"]}), 400, "invalid_param", "at most 3")


def test_body_over_the_default_limit_is_413(api: Client, nothing_happens: None) -> None:
    body = {"meters": [f"m-{i:06}" for i in range(30_000)]}  # ~360 KiB
    assert_error(post(api, body), 413, "request_too_large", str(256 * 1024))


def test_body_limit_is_a_setting(api: Client, settings: Any, nothing_happens: None) -> None:
    settings.COLLECTIONS_API_MAX_BODY_BYTES = 100
    assert_error(post(api, {"meters": [f"m-{i}" for i in range(20)]}), 413, "request_too_large")


def test_parser_bounds_a_body_with_no_declared_length(settings: Any) -> None:
    settings.COLLECTIONS_API_MAX_BODY_BYTES = 100
    with pytest.raises(RequestTooLarge):
        BoundedJSONParser().parse(io.BytesIO(b"[" + b"1," * 100 + b"1]"), parser_context={})
    assert BoundedJSONParser().parse(io.BytesIO(b'{"a": 1}'), parser_context={}) == {"a": 1}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_non_json_body_is_415(api: Client, nothing_happens: None, content_type: str) -> None:
    response = api.post(URL, "meters=m-1", content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods_are_405(api: Client, method: str) -> None:
    created = services.request_collection(["m-1"])
    for url in (URL, f"{URL}{created.pk}/"):
        response = getattr(api, method)(url, "{}", content_type="application/json")
        assert_error(response, 405, "method_not_allowed")
    assert CollectionRequest.objects.get().status == Status.SUBMITTED


# --- Idempotency-Key -------------------------------------------------------------------------


def test_retry_with_the_same_key_returns_the_first_request(
    api: Client, django_capture_on_commit_callbacks: Any
) -> None:
    body = {"meters": ["m-1"], "collection_duration": 6}
    with django_capture_on_commit_callbacks() as callbacks:
        first = post(api, body, **{"Idempotency-Key": "order-42"})
        again = post(api, body, **{"Idempotency-Key": "order-42"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again["Location"] == first["Location"]
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert CollectionRequest.objects.count() == 1  # stored, so sent, once
    assert callbacks == []


def test_same_key_with_another_body_is_422(api: Client) -> None:
    post(api, {"meters": ["m-1"]}, **{"Idempotency-Key": "k"})
    for other in ({"meters": ["m-2"]}, {"meters": ["m-1"], "collection_duration": 3}):
        response = post(api, other, **{"Idempotency-Key": "k"})
        body = assert_error(response, 422, "idempotency_key_reused", "Idempotency-Key")
        assert body["field"] == "idempotency_key"
    assert CollectionRequest.objects.count() == 1


def test_keys_belong_to_one_user(api: Client, make_user: Callable[..., Any]) -> None:
    other = client_for(make_user("other", VIEW, ADD, TRIGGER))
    first = post(api, {"meters": ["m-1"]}, **{"Idempotency-Key": "k"}).json()
    second = post(other, {"meters": ["m-2"]}, **{"Idempotency-Key": "k"}).json()
    assert first["id"] != second["id"]


def test_overlong_key_is_400(api: Client, nothing_happens: None) -> None:
    response = post(api, {"meters": ["m-1"]}, **{"Idempotency-Key": "k" * 256})
    assert assert_error(response, 400, "invalid_param", "255")["field"] == "idempotency_key"


# --- authentication and permissions ------------------------------------------------------------


def test_no_credentials_is_401(nothing_happens: None) -> None:
    for response in (Client().get(URL), post(Client(), {"meters": ["m-1"]})):
        assert_error(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(
    "header",
    [
        "Bearer nope",
        "Bearer",
        "Bearer a b",
        "bearer cs_unknown",
        "Bearer caf\xe9",
    ],
)
def test_bad_token_is_401(header: str, nothing_happens: None) -> None:
    client = Client(headers={"Authorization": header})
    assert_error(post(client, {"meters": ["m-1"]}), 401, "invalid_token")
    assert_error(client.get(URL), 401, "invalid_token")


def test_other_schemes_are_not_authentication(nothing_happens: None) -> None:
    client = Client(headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert_error(post(client, {"meters": ["m-1"]}), 401, "not_authenticated")


def test_revoked_token_is_401(user: Any, nothing_happens: None) -> None:
    token, raw = tokens.issue(user)
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    assert client.get(URL).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert_error(client.get(URL), 401, "invalid_token", "revoked")


def test_inactive_users_token_is_401(user: Any, api: Client) -> None:
    user.is_active = False
    user.save()
    assert_error(api.get(URL), 401, "invalid_token")


def test_only_a_digest_is_stored_and_use_is_noted(user: Any) -> None:
    token, raw = tokens.issue(user, "web app")
    assert raw.startswith("cs_") and len(raw) > 40
    assert token.digest == hashlib.sha256(raw.encode()).hexdigest()
    assert token.prefix == raw[:12]
    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert raw not in [str(v) for v in stored.values()]
    assert stored["last_used_at"] is None
    Client(headers={"Authorization": f"Bearer {raw}"}).get(URL)
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_last_used_is_written_at_most_once_a_minute(user: Any) -> None:
    token, raw = tokens.issue(user)
    earlier = timezone.now() - timedelta(seconds=30)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=earlier)
    tokens.authenticate(raw)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == earlier
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=earlier - timedelta(minutes=1))
    tokens.authenticate(raw)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > earlier


@pytest.mark.parametrize(
    ("codenames", "missing"),
    [
        ((VIEW,), "collections_app.add_collectionrequest, collections_app.trigger_collection"),
        ((VIEW, ADD), "collections_app.trigger_collection"),
        ((VIEW, TRIGGER), "collections_app.add_collectionrequest"),
    ],
)
def test_post_needs_add_and_trigger_permissions(
    make_user: Callable[..., Any], nothing_happens: None, codenames: tuple[str], missing: str
) -> None:
    client = client_for(make_user("limited", *codenames))
    assert_error(post(client, {"meters": ["m-1"]}), 403, "permission_denied", missing)


def test_reads_need_the_view_permission(make_user: Callable[..., Any]) -> None:
    client = client_for(make_user("writer", ADD, TRIGGER))
    created = post(client, {"meters": ["m-1"]})
    assert created.status_code == 202
    assert_error(client.get(URL), 403, "permission_denied", "view_collectionrequest")
    assert_error(client.get(created["Location"]), 403, "permission_denied")


def test_superuser_may_do_everything(django_user_model: Any) -> None:
    client = client_for(django_user_model.objects.create_superuser("root", password=None))
    assert post(client, {"meters": ["m-1"]}).status_code == 202
    assert client.get(URL).status_code == 200


# --- sessions ---------------------------------------------------------------------------------


def test_staff_session_reads(make_user: Callable[..., Any]) -> None:
    client = Client()
    client.force_login(make_user("operator", VIEW, is_staff=True))
    assert client.get(URL).status_code == 200


def test_non_staff_session_is_not_authenticated(make_user: Callable[..., Any]) -> None:
    client = Client()
    client.force_login(make_user("customer", VIEW, ADD, TRIGGER))
    assert_error(client.get(URL), 401, "not_authenticated")


def test_session_post_needs_a_csrf_token(
    make_user: Callable[..., Any], django_capture_on_commit_callbacks: Any
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user("operator", VIEW, ADD, TRIGGER, is_staff=True))
    with django_capture_on_commit_callbacks() as callbacks:
        refused = post(client, {"meters": ["m-1"]})
    assert_error(refused, 403, "permission_denied", "CSRF")
    assert CollectionRequest.objects.count() == 0 and callbacks == []
    secret = get_random_string(32)
    client.cookies["csrftoken"] = secret
    assert post(client, {"meters": ["m-1"]}, **{"X-CSRFToken": secret}).status_code == 202


def test_bearer_requests_need_no_csrf_token(user: Any) -> None:
    _, raw = tokens.issue(user)
    client = Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {raw}"})
    assert post(client, {"meters": ["m-1"]}).status_code == 202


# --- reading ----------------------------------------------------------------------------------


@pytest.fixture
def five(user: Any) -> list[CollectionRequest]:
    """Five requests, oldest first, the 2nd and 4th failed."""
    start = timezone.now() - timedelta(hours=1)
    made = []
    for i in range(5):
        request = services.request_collection([f"m-{i}"], requested_by=user)
        status = Status.FAILED if i in (1, 3) else Status.SUBMITTED
        CollectionRequest.objects.filter(pk=request.pk).update(
            created=start + timedelta(minutes=i), status=status
        )
        made.append(request)
    return made


def test_detail(api: Client, five: list[CollectionRequest]) -> None:
    body = api.get(f"{URL}{five[1].pk}/").json()
    assert (body["id"], body["status"], body["meters"]) == (str(five[1].pk), "failed", ["m-1"])


@pytest.mark.parametrize(
    "path",
    [
        f"{URL}{uuid.uuid4()}/",
        f"{URL}not-a-uuid/",
        f"{URL}12/",
        f"{URL}a/b/",
        "/api/collections",
        "/api/",
        "/api/nothing-here",
    ],
)
def test_unknown_ids_and_paths_are_404_in_the_error_shape(api: Client, path: str) -> None:
    assert_error(api.get(path), 404, "not_found")


def test_list_pages_newest_first(api: Client, five: list[CollectionRequest]) -> None:
    seen, url, pages = [], f"{URL}?page_size=2", 0
    while url:
        page = api.get(url).json()
        assert list(page) == ["next", "previous", "results"]
        assert len(page["results"]) <= 2
        seen += [r["id"] for r in page["results"]]
        url, pages = page["next"], pages + 1
    assert seen == [str(r.pk) for r in reversed(five)]
    assert pages == 3


def test_list_filters_by_status(api: Client, five: list[CollectionRequest]) -> None:
    failed = api.get(f"{URL}?status=failed").json()
    assert [r["id"] for r in failed["results"]] == [str(five[3].pk), str(five[1].pk)]
    assert failed["next"] is None
    assert api.get(f"{URL}?status=pending").json()["results"] == []


def test_default_page_size_is_a_setting(
    api: Client, five: list[CollectionRequest], settings: Any
) -> None:
    settings.COLLECTIONS_API_PAGE_SIZE = 4
    page = api.get(URL).json()
    assert len(page["results"]) == 4 and page["next"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=FAILED", "status"),
        ("status=", "status"),
        ("status=done", "status"),
        ("page_size=0", "page_size"),
        ("page_size=501", "page_size"),
        ("page_size=two", "page_size"),
        ("page_size=-1", "page_size"),
    ],
)
def test_bad_list_parameters_are_400(api: Client, query: str, field: str) -> None:
    assert assert_error(api.get(f"{URL}?{query}"), 400, "invalid_param", field)["field"] == field


@pytest.mark.parametrize("cursor", ["p=garbage", "p=2020-01-01", "p=2020-99-99T00:00Z", "o=x"])
def test_invalid_cursor_is_404(api: Client, five: list[CollectionRequest], cursor: str) -> None:
    """Made-up cursors, even well-encoded ones, are refused (not a database error)."""
    assert_error(api.get(f"{URL}?cursor=garbage"), 404, "not_found", "cursor")
    forged = base64.b64encode(cursor.encode()).decode()
    assert_error(api.get(URL, {"cursor": forged}), 404, "not_found", "cursor")


def test_documented_uid_pattern_is_the_validation_rule() -> None:
    """The schema's pattern accepts exactly the characters clean_meters accepts (every
    non-surrogate code point of the Basic Multilingual Plane, plus a few beyond)."""
    pattern = re.compile(UID_PATTERN)
    for code in [*range(0xD800), *range(0xE000, 0x10000), 0x1F600, 0x10FFFF]:
        uid = f"m{chr(code)}"
        try:
            clean_meters([uid])
            valid = True
        except ValidationError:
            valid = False
        assert bool(pattern.fullmatch(uid)) == valid, hex(code)


def test_schema_is_public_json(client: Client) -> None:
    response = client.get("/api/schema.json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert set(schema["paths"]) == {"/api/collections/", "/api/collections/{id}/"}
    assert set(schema["components"]["securitySchemes"]) == {"bearerAuth", "staffSessionAuth"}


def test_every_problem_with_the_meters_is_in_the_description(
    api: Client, nothing_happens: None
) -> None:
    body = assert_error(
        post(api, {"meters": ["100001", "100001", "bad meter"]}), 400, "invalid_param"
    )
    assert body["field"] == "meters"
    assert body["error_description"] == (
        "meters lists 100001 more than once (the 1st and 2nd meters). "
        "meters: the 3rd meter ('bad meter') is not a meter uid: at most 64 characters, "
        "no spaces and no control, format, private-use or unassigned characters."
    )
