"""Security: the UtilityAPI token stays secret end to end; production settings pass
`check --deploy`; a 401/402 pauses the fleet instead of failing requests one by one."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.core.exceptions import ValidationError
from django.urls import Resolver404, resolve, reverse
from django_celery_results.models import TaskResult

from collections_app import services
from collections_app.client import UtilityAPIClient
from collections_app.exceptions import UtilityAPIError
from collections_app.models import CollectionRequest, Status

from .conftest import ROOT, Worker, wait_until

# A token no other text contains, in the shape of a real one.
TOKEN = "uapi_" + secrets.token_hex(20)


def settled(ids: list[Any], timeout: float = 30) -> list[CollectionRequest]:
    wait_until(
        lambda: not CollectionRequest.objects.filter(pk__in=ids, status="submitted").exists(),
        timeout=timeout,
    )
    return list(CollectionRequest.objects.filter(pk__in=ids))


def exists(url: str) -> bool:
    try:
        resolve(url)
    except Resolver404:
        return False
    return True


def leaks(text: str) -> list[str]:
    """Where the token (or its distinctive tail) shows in `text`."""
    return [text[max(i - 60, 0) : i + 60] for i in _find(text, TOKEN[-16:])]


def _find(text: str, needle: str) -> list[int]:
    found, start = [], text.find(needle)
    while start != -1:
        found.append(start)
        start = text.find(needle, start + 1)
    return found


# --- the token ----------------------------------------------------------------------------------


def client_errors(sandbox: Any, echo: str) -> list[BaseException]:
    """Each kind of error the client raises, made for real: an echoing 401, a timeout, an
    echoing proxy page (bad response), and a refused connection."""
    sandbox.state.script.extend(
        [
            {"status": 401, "body": {"error": "invalid_token", "error_description": echo}},
            {"hang": 1.5},
            {"status": 200, "body": echo},
        ]
    )
    made: list[BaseException] = []
    for base in [sandbox.url] * 3 + ["http://127.0.0.1:9/api/v2"]:
        client = UtilityAPIClient(base, TOKEN, connect_timeout=0.5, read_timeout=1.0)
        try:
            client.historical_collection(["m-1"], 12)
        except UtilityAPIError as err:
            made.append(err)
    assert len(made) == 4
    return made


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_token_never_shows_in_logs_results_pages_or_errors(
    start_worker: Callable[..., Worker],
    sandbox: Any,
    settings: Any,
    admin_client: Any,
    caplog: Any,
    redis_db: redis.Redis,
) -> None:
    """A real flow with a distinctive token; its answers include a proxy page and a 401 that
    echo the Authorization header. Then every place text ends up is searched for it."""
    caplog.set_level("DEBUG")
    sandbox.state.token = settings.UTILITYAPI_TOKEN = TOKEN
    echo = f"<pre>Authorization: Bearer {TOKEN}</pre>"
    sandbox.state.script.extend(
        [
            {"status": 200, "body": echo},  # a proxy's page: bad_response, retried
            {"status": 503, "body": echo},
            {"status": 400, "body": {"error": "invalid_param", "error_description": echo}},
            {"status": 401, "body": {"error": "invalid_token", "error_description": echo}},
        ]
    )
    worker = start_worker(concurrency=1, LOG_LEVEL="DEBUG", COLLECTIONS_ACCOUNT_PAUSE_SECONDS=1)
    ids = [services.request_collection([f"secret-{i}"], i + 1).pk for i in range(3)]
    requests = settled(ids)
    assert sorted(r.status for r in requests) == ["failed", "failed", "pending"]

    texts: dict[str, str] = {"test process log": caplog.text, "worker log": worker.output()}
    for result in TaskResult.objects.all():
        texts[f"task result {result.task_id}"] = " ".join(
            str(getattr(result, f.name)) for f in TaskResult._meta.fields
        )
    for key in redis_db.keys("collections:*"):
        kind = redis_db.type(key).decode()
        value = redis_db.get(key) if kind == "string" else redis_db.dump(key)
        texts[f"redis {key!r}"] = repr(value)
    pages = [
        reverse("admin:collections_app_collectionrequest_changelist"),
        reverse("admin:django_celery_results_taskresult_changelist"),
        *[reverse("admin:collections_app_collectionrequest_change", args=[pk]) for pk in ids],
        *[
            reverse("admin:django_celery_results_taskresult_change", args=[r.pk])
            for r in TaskResult.objects.all()
        ],
    ]
    for url in ["/api/collections/", *[f"/api/collections/{pk}/" for pk in ids]]:
        pages.append(url if exists(url) else None)
    for url in ["/ops/", "/ops/metrics.json", "/metrics"]:
        pages.append(url if exists(url) else None)
    for url in filter(None, pages):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        texts[f"page {url}"] = response.content.decode()
    for err in client_errors(sandbox, echo):
        texts[f"error {type(err).__name__} {err.error}"] = " ".join(
            [str(err), repr(err), "".join(traceback.format_exception(err))]
        )
    client = UtilityAPIClient(sandbox.url, TOKEN)
    texts["client"] = f"{client!s} {client!r}"

    found = {where: leaks(text) for where, text in texts.items() if leaks(text)}
    assert not found, found
    assert len(texts) >= 15  # logs, results, pages and errors were all looked at
    failed = [r for r in requests if r.status == Status.FAILED]
    assert any("[redacted]" in r.error_description for r in failed)


def test_the_token_is_redacted_from_an_echoing_answer(sandbox: Any) -> None:
    """The client strips its own token from any body, so no later step can show it."""
    sandbox.state.token = TOKEN
    sandbox.state.script.append(
        {"status": 402, "body": {"error": "payment_required", "error_description": TOKEN}}
    )
    client = UtilityAPIClient(sandbox.url, TOKEN)
    with pytest.raises(UtilityAPIError) as caught:
        client.historical_collection(["m-1"])
    assert caught.value.description == "[redacted]"
    assert TOKEN not in repr(caught.value) and TOKEN not in repr(client)


# --- production settings ------------------------------------------------------------------------


def check_deploy(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    base.update(DJANGO_SETTINGS_MODULE="project.settings", **env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "collections.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://collections.example.com",
    "UTILITYAPI_TOKEN": TOKEN,
}


def test_production_settings_pass_check_deploy() -> None:
    done = check_deploy(**PRODUCTION)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "System check identified no issues (0 silenced)."
    assert "WARNING" not in done.stderr and TOKEN not in done.stdout + done.stderr


def test_check_deploy_would_catch_a_weak_secret_and_debug() -> None:
    """The check above can fail: a short key or DEBUG on are reported."""
    weak = check_deploy(**{**PRODUCTION, "DJANGO_SECRET_KEY": "short"})
    assert "security.W009" in weak.stderr
    debug = check_deploy(**{**PRODUCTION, "DJANGO_DEBUG": "1"})
    assert "security.W018" in debug.stderr


def test_production_refuses_to_start_without_a_secret_key() -> None:
    done = check_deploy(**{**PRODUCTION, "DJANGO_SECRET_KEY": ""})
    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in done.stderr


# --- the account pause (401/402) ----------------------------------------------------------------

PAUSE_SECONDS = 6


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_402_fails_one_request_and_pauses_the_others(
    start_worker: Callable[..., Worker], sandbox: Any, admin_client: Any
) -> None:
    """UtilityAPI answers 402 once: that request fails with payment_required; the requests
    queued behind it stay `submitted` (untouched, not failed) for the whole pause, the admin
    and dashboard say why, and when the pause ends they go through."""
    sandbox.state.latency_ms = 300
    sandbox.state.script.append(
        {"status": 402, "body": {"error": "payment_required", "error_description": "No funds."}}
    )
    start_worker(concurrency=1, COLLECTIONS_ACCOUNT_PAUSE_SECONDS=PAUSE_SECONDS)
    first = services.request_collection(["pay-0"], 1)
    others = [services.request_collection([f"pay-{i}"], i + 1).pk for i in range(1, 4)]
    wait_until(lambda: CollectionRequest.objects.get(pk=first.pk).status != "submitted")
    paused_at = time.time()
    failed = CollectionRequest.objects.get(pk=first.pk)
    assert (failed.status, failed.error, failed.last_http_status) == (
        "failed",
        "payment_required",
        402,
    )

    def deferred() -> bool:  # the worker has looked at each and put it back until the pause ends
        rows = CollectionRequest.objects.filter(pk__in=others)
        return all(r.next_attempt_at.timestamp() > paused_at + 1 for r in rows)

    wait_until(deferred, timeout=PAUSE_SECONDS - 2)
    rows = list(CollectionRequest.objects.filter(pk__in=others))
    assert {(r.status, r.attempts, r.error) for r in rows} == {("submitted", 0, "")}
    assert len(sandbox.state.calls) == 1
    page = admin_client.get(reverse("admin:collections_app_collectionrequest_changelist"))
    text = page.content.decode()
    assert "UtilityAPI account unusable" in text and "402 payment_required" in text
    if exists("/ops/metrics.json"):
        assert "402 payment_required" in admin_client.get("/ops/metrics.json").content.decode()
    assert time.time() < paused_at + PAUSE_SECONDS  # all of the above was seen during the pause

    done = settled(others, timeout=PAUSE_SECONDS + 15)
    calls = sandbox.state.calls
    assert {r.status for r in done} == {"pending"}
    assert len(calls) == 4 and calls[0]["status"] == 402
    assert all(c["at"] >= calls[0]["answered"] + PAUSE_SECONDS - 0.1 for c in calls[1:])
    assert CollectionRequest.objects.get(pk=first.pk).status == "failed"


# --- abuse limits -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_login_is_throttled_after_repeated_failures(
    django_user_model: Any, settings: Any, redis_db: redis.Redis
) -> None:
    """Failed logins are counted in Redis; past the limit even the right password gets a 429
    with Retry-After, until the window ends."""
    from django.test import Client

    settings.ADMIN_LOGIN_MAX_FAILURES = 3
    django_user_model.objects.create_superuser("boss", "boss@example.com", "right-password")
    url = reverse("admin:login")
    client = Client()
    for _ in range(3):
        assert client.post(url, {"username": "boss", "password": "wrong"}).status_code == 200
    refused = client.post(url, {"username": "boss", "password": "right-password"})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session
    other = Client(REMOTE_ADDR="192.0.2.7")  # another address, same username: still refused
    assert other.post(url, {"username": "boss", "password": "right-password"}).status_code == 429
    redis_db.flushdb()  # the window over
    assert client.post(url, {"username": "boss", "password": "right-password"}).status_code == 302


@pytest.mark.django_db
def test_api_posts_are_rate_limited_per_token(
    django_user_model: Any, settings: Any, redis_db: redis.Redis
) -> None:
    """Past COLLECTIONS_API_POST_RATE a token's POSTs get a 429 in the error shape with
    Retry-After, and nothing is stored; another token, and reads, are not affected."""
    from django.contrib.auth.models import Permission
    from django.test import Client

    from collections_app.services import tokens

    settings.COLLECTIONS_API_POST_RATE = "2/min"
    user = django_user_model.objects.create_user("caller")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="collections_app"))
    first, second = tokens.issue(user)[1], tokens.issue(user)[1]

    def post(token: str) -> Any:
        return Client().post(
            "/api/collections/",
            {"meters": ["m-1"]},
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )

    assert [post(first).status_code for _ in range(2)] == [202, 202]
    limited = post(first)
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert limited.json()["error"] == "rate_limited" and limited.json()["error_description"]
    assert CollectionRequest.objects.count() == 2
    assert post(second).status_code == 202
    reads = Client().get("/api/collections/", headers={"Authorization": f"Bearer {first}"})
    assert reads.status_code == 200


@pytest.fixture
def api_token(django_user_model: Any) -> str:
    from django.contrib.auth.models import Permission

    from collections_app.services import tokens

    user = django_user_model.objects.create_user("poster")
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="collections_app"))
    return tokens.issue(user)[1]


def api_post(token: str, body: bytes, **headers: str) -> Any:
    from django.test import Client

    return Client().post(
        "/api/collections/",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}", **headers},
    )


@pytest.mark.django_db
def test_a_body_over_every_limit_is_a_json_413_refused_before_reading(
    api_token: str, redis_db: redis.Redis
) -> None:
    """3 MB (past Django's own default limit): a JSON 413, not Django's HTML 400; the body is
    never read (the stream would raise)."""
    from django.conf import settings
    from django.test import RequestFactory

    from collections_app.api.views import CollectionRequestList

    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == settings.COLLECTIONS_API_MAX_BODY_BYTES
    big = b'{"meters": ["' + b"m" * 3_000_000 + b'"]}'
    response = api_post(api_token, big)
    assert response.status_code == 413 and response.json()["error"] == "request_too_large"

    class Unreadable:
        def read(self, *args: Any) -> bytes:
            raise AssertionError("the body was read")

        readline = read

    request = RequestFactory().post(
        "/api/collections/", big, content_type="application/json",
        headers={"Authorization": f"Bearer {api_token}"},
    )  # fmt: skip
    request._stream = Unreadable()
    refused = CollectionRequestList.as_view()(request)
    assert refused.status_code == 413
    assert not CollectionRequest.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["a\x00b", "a\x01b", "a\x7fb", "clé", "a\tb"])
def test_an_idempotency_key_must_be_printable_ascii(
    api_token: str, key: str, redis_db: redis.Redis
) -> None:
    response = api_post(api_token, b'{"meters": ["m-1"]}', **{"Idempotency-Key": key})
    assert response.status_code == 400, response.content
    assert response.json()["field"] == "idempotency_key"
    assert not CollectionRequest.objects.exists()
    with pytest.raises(ValidationError):
        services.request_collection(["m-1"], idempotency_key=key)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "uid", ["evil\u202etxt.exe", "a\u200bb", "a\u200db", "\ufeffm", "a\u2066b", "a\x85b", "a\ue000",
            "a\u0378", "a\u3000b", "a\u2028b"],
)  # fmt: skip
def test_meter_uids_refuse_invisible_and_direction_changing_characters(uid: str) -> None:
    with pytest.raises(ValidationError):
        services.request_collection([uid])
    assert not CollectionRequest.objects.exists()


def test_x_forwarded_proto_is_trusted_only_behind_a_declared_proxy() -> None:
    code = "from django.conf import settings; print(getattr(settings, 'SECURE_PROXY_SSL_HEADER'))"

    def header(**env: str) -> str:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, text=True,
            env={**base, "DJANGO_SETTINGS_MODULE": "project.settings", "DJANGO_DEBUG": "1", **env},
            capture_output=True, timeout=60,
        )  # fmt: skip
        return done.stdout.strip().splitlines()[-1]

    assert header() == "None"
    assert header(DJANGO_BEHIND_PROXY="1") == "('HTTP_X_FORWARDED_PROTO', 'https')"


def test_debug_is_off_unless_asked_for() -> None:
    """Without DJANGO_DEBUG the settings are production's: no key, no start."""
    done = check_deploy()
    assert done.returncode != 0 and "DJANGO_SECRET_KEY must be set" in done.stderr


def test_a_real_token_with_a_sandbox_url_refuses_to_start(settings: Any) -> None:
    from collections_app.client import get_client
    from collections_app.exceptions import ConfigurationError

    done = check_deploy(**PRODUCTION, UTILITYAPI_BASE_URL="http://sandbox:8765/api/v2")
    assert done.returncode != 0 and "collections.E001" in done.stderr
    assert TOKEN not in done.stderr
    settings.UTILITYAPI_BASE_URL, settings.UTILITYAPI_TOKEN = "http://127.0.0.1:8765/api/v2", TOKEN
    with pytest.raises(ConfigurationError):
        get_client()
    settings.UTILITYAPI_TOKEN = settings.UTILITYAPI_SANDBOX_TOKEN
    assert get_client().base_url == "http://127.0.0.1:8765/api/v2"
