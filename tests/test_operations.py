"""What an operator's tooling relies on: /readyz against real PostgreSQL and Redis (stopped,
frozen, unreachable), the worker's and beat's heartbeat files with real processes, JSON logs of
a real worker, the Sentry scrubber, the UtilityAPI call counters and Prometheus' own checker
(promtool) on /metrics and on the shipped alert rules."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from prometheus_client.parser import text_string_to_metric_families

from collections_app import services
from collections_app.client import get_client
from collections_app.exceptions import Throttled, TransientError
from collections_app.gate import telemetry
from collections_app.models import Attempt, CollectionRequest, Status
from project import sentry

from .conftest import ROOT, Worker, wait_until, worker_env
from .test_faults import PrivateRedis, free_port

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def readyz(client: Any) -> tuple[int, dict[str, Any]]:
    response = client.get("/readyz")
    return response.status_code, response.json()


# --- /readyz ------------------------------------------------------------------------------------


@pytest.fixture
def private_redis(settings: Any) -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    settings.REDIS_URL = server.url
    yield server
    if server.process and server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.mark.django_db
def test_readyz_is_200_when_everything_answers(client: Any, private_redis: PrivateRedis) -> None:
    status, body = readyz(client)
    assert status == 200, body
    assert body["ready"] is True and body["failed"] == []
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "redis": True,
        "migrations": True,
    }


@pytest.mark.django_db
def test_readyz_names_redis_when_it_is_stopped(client: Any, private_redis: PrivateRedis) -> None:
    assert readyz(client)[0] == 200
    private_redis.stop()
    status, body = readyz(client)
    assert status == 503
    assert body["failed"] == ["redis"]
    assert body["checks"]["redis"]["error"] == "ConnectionError"


@pytest.mark.django_db
def test_readyz_answers_when_redis_hangs(client: Any, private_redis: PrivateRedis) -> None:
    """A frozen Redis accepts connections and never answers: the check times out."""
    assert private_redis.process is not None
    os.killpg(private_redis.process.pid, signal.SIGSTOP)
    status, body = readyz(client)
    assert status == 503 and body["failed"] == ["redis"]
    assert body["checks"]["redis"]["error"].startswith("timed out")


@pytest.mark.django_db
def test_readyz_names_the_database_when_it_is_unreachable(
    client: Any, monkeypatch: pytest.MonkeyPatch, redis_db: Any
) -> None:
    # The check's thread opens a connection of its own from these settings: nothing listens.
    monkeypatch.setitem(connections.settings["default"], "PORT", str(free_port()))
    status, body = readyz(client)
    assert status == 503
    assert body["failed"] == ["database", "migrations"]
    assert body["checks"]["database"]["error"] == "OperationalError"
    assert body["checks"]["migrations"]["error"] == "database unavailable"
    assert body["checks"]["redis"]["ok"] is True


@pytest.mark.django_db(transaction=True)
def test_readyz_names_unapplied_migrations(client: Any, redis_db: Any) -> None:
    with connection.cursor() as cursor:  # the latest migration, as if not yet applied
        cursor.execute(
            "DELETE FROM django_migrations WHERE id = (SELECT max(id) FROM django_migrations "
            "WHERE app = 'collections_app') RETURNING name, applied"
        )
        (name, applied) = cursor.fetchone()
    try:
        status, body = readyz(client)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO django_migrations (app, name, applied) VALUES (%s, %s, %s)",
                ["collections_app", name, applied],
            )
    assert status == 503 and body["failed"] == ["migrations"]
    assert body["checks"]["database"]["unapplied_migrations"] == [f"collections_app.{name}"]
    assert readyz(client)[0] == 200


# --- worker and beat liveness -------------------------------------------------------------------


def heartbeat_file() -> str:
    return str(Path(tempfile.mkdtemp(prefix="heartbeat-")) / "alive")


def alive(settings: Any, process: str, path: str, max_age: float) -> bool:
    setattr(settings, f"{process.upper()}_HEARTBEAT_FILE", path)
    try:
        call_command("alive", process, "--max-age", str(max_age), stdout=io.StringIO())
    except CommandError:
        return False
    return True


@pytest.mark.e2e
def test_worker_heartbeat_goes_stale_when_the_worker_is_frozen(
    start_worker: Callable[..., Worker], settings: Any
) -> None:
    path = heartbeat_file()
    worker = start_worker(
        concurrency=1, WORKER_HEARTBEAT_FILE=path, HEARTBEAT_INTERVAL_SECONDS="0.2"
    )
    wait_until(lambda: alive(settings, "worker", path, max_age=1), timeout=10)
    os.killpg(worker.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not alive(settings, "worker", path, max_age=1), timeout=10)
    finally:
        os.killpg(worker.process.pid, signal.SIGCONT)
    wait_until(lambda: alive(settings, "worker", path, max_age=1), timeout=10)
    worker.stop()
    assert not Path(path).exists()  # a worker that stopped is not alive
    with pytest.raises(CommandError, match="no heartbeat file"):
        call_command("alive", "worker")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_beat_heartbeat_goes_stale_when_beat_is_frozen(
    sandbox: Any, redis_db: Any, settings: Any
) -> None:
    path = heartbeat_file()
    env = worker_env(sandbox, BEAT_HEARTBEAT_FILE=path)
    schedule = Path(tempfile.mkdtemp(prefix="beat-")) / "schedule"
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO",
         "--schedule", str(schedule)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: alive(settings, "beat", path, max_age=3), timeout=30)
        os.killpg(beat.pid, signal.SIGSTOP)
        # The scheduler ticks at least every 5 s; frozen, its file ages past any such gap.
        wait_until(lambda: not alive(settings, "beat", path, max_age=7), timeout=15)
        os.killpg(beat.pid, signal.SIGCONT)
        wait_until(lambda: alive(settings, "beat", path, max_age=3), timeout=15)
    finally:
        os.killpg(beat.pid, signal.SIGCONT)
        beat.terminate()
        beat.wait(15)


# --- JSON logs ----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_json_log_of_one_send_carries_its_ids(
    start_worker: Callable[..., Worker], sandbox: Any
) -> None:
    worker = start_worker(concurrency=1, LOG_FORMAT="json")
    request = services.request_collection(["json-1"], 12)
    wait_until(
        lambda: CollectionRequest.objects.filter(pk=request.pk, status=Status.PENDING).exists()
    )
    attempt = Attempt.objects.get(request=request)
    wait_until(lambda: "succeeded" in worker.output())
    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    send_path = [line for line in lines if line.get("request_id") == str(request.pk)]
    assert {line["logger"] for line in send_path} >= {"collections_app.delivery"}
    assert {line["task_id"] for line in send_path} == {attempt.task_id}
    answered = [line for line in send_path if line["message"].startswith("UtilityAPI answered")]
    assert len(answered) == 1
    assert answered[0]["call_id"] == str(attempt.call_id)
    assert answered[0]["request_ids"] == str(request.pk)
    succeeded = [line for line in send_path if "succeeded" in line["message"]]
    assert succeeded and succeeded[0]["call_id"] == str(attempt.call_id)


@pytest.mark.parametrize(
    ("name", "value"), [("LOG_LEVEL", "loud"), ("LOG_FORMAT", "xml"), ("LOG_FORMAT", "")]
)
def test_bad_log_settings_stop_start_up(name: str, value: str) -> None:
    env = {**os.environ, name: value, "DJANGO_SETTINGS_MODULE": "project.settings"}
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if not value:  # empty is the default
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode != 0
    assert f"ImproperlyConfigured: {name} must be one of" in done.stderr


# --- Sentry -------------------------------------------------------------------------------------


def test_sentry_scrubs_every_secret_wherever_it_appears(settings: Any) -> None:
    settings.UTILITYAPI_TOKEN = "tok-123456"
    settings.UTILITYAPI_WEBHOOK_SECRET = "whsec-abcdef"
    event = {
        "message": "POST failed with Bearer tok-123456",
        "exception": {"values": [{"value": "bad signature for whsec-abcdef"}]},
        "breadcrumbs": {"values": [{"data": {"headers": ["Authorization: Bearer tok-123456"]}}]},
        "extra": {"tok-123456": 1, "count": 3},
    }
    scrubbed = sentry.before_send(event, {})
    text = json.dumps(scrubbed)
    assert "tok-123456" not in text and "whsec-abcdef" not in text
    assert scrubbed["message"] == "POST failed with Bearer [Filtered]"
    assert scrubbed["extra"] == {"[Filtered]": 1, "count": 3}


def sentry_state(dsn: str | None) -> dict[str, Any]:
    """Whether Sentry is on, and its integrations, in a process started with this DSN."""
    code = (
        "import json, django, sentry_sdk; django.setup(); c = sentry_sdk.get_client(); "
        "print(json.dumps({'active': c.is_active(), "
        "'integrations': sorted(getattr(c, 'integrations', {}))}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "SENTRY_DSN"}
    env.update(DJANGO_SETTINGS_MODULE="project.settings", **({"SENTRY_DSN": dsn} if dsn else {}))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_sentry_is_off_unless_a_dsn_is_set() -> None:
    assert sentry_state(None)["active"] is False
    on = sentry_state("http://public@127.0.0.1:9/1")
    assert on["active"] is True
    assert {"django", "celery"} <= set(on["integrations"])


# --- UtilityAPI call counters and Prometheus ----------------------------------------------------


def scrape(client: Any) -> str:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    staff = get_user_model().objects.create_user(
        f"staff-{uuid.uuid4().hex[:6]}", password="pw", is_staff=True
    )
    staff.user_permissions.add(Permission.objects.get(codename="view_collectionrequest"))
    client.force_login(staff)
    response = client.get("/metrics")
    assert response.status_code == 200
    return str(response.content.decode())


def samples(text: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.django_db
def test_calls_are_counted_by_endpoint_and_status(
    client: Any, sandbox: Any, redis_db: Any, settings: Any
) -> None:
    sandbox.state.script.extend([{"status": 429, "body": {}}, {"status": 200}])
    uapi = get_client()
    with pytest.raises(Throttled):
        uapi.historical_collection(["m-1"], 12)
    uapi.historical_collection(["m-1"], 12)
    uapi.get_json("/meters", params={"limit": 1})
    settings.UTILITYAPI_BASE_URL = f"http://127.0.0.1:{free_port()}/api/v2"
    with pytest.raises(TransientError):
        get_client().get_json("/meters")
    found = samples(scrape(client))
    post, meters = "POST /meters/historical-collection", "GET /meters"
    calls = "collections_utilityapi_calls_total"
    assert found[(calls, (("endpoint", post), ("status", "429")))] == 1
    assert found[(calls, (("endpoint", post), ("status", "200")))] == 1
    assert found[(calls, (("endpoint", meters), ("status", "200")))] == 1
    assert found[(calls, (("endpoint", meters), ("status", "error")))] == 1
    latency = "collections_utilityapi_call_duration_seconds"
    assert found[(latency + "_count", (("endpoint", post),))] == 2
    assert found[(latency + "_bucket", (("endpoint", post), ("le", "+Inf")))] == 2
    assert found[(latency + "_sum", (("endpoint", post),))] > 0


def test_endpoint_names_keep_ids_out() -> None:
    base = "https://utilityapi.com/api/v2"
    assert telemetry.endpoint("GET", base + "/meters?uids=1,2", base) == "GET /meters"
    assert telemetry.endpoint("GET", base + "/authorizations/123", base) == (
        "GET /authorizations/{id}"
    )


@needs_promtool
@pytest.mark.django_db
def test_promtool_accepts_the_metrics(client: Any, sandbox: Any, redis_db: Any) -> None:
    get_client().historical_collection(["m-1"], 12)
    text = scrape(client)
    assert "collections_utilityapi_call_duration_seconds_bucket" in text
    done = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    rules = ROOT / "docs" / "alerts.yml"
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(rules)], capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr
    names = {line.split(":", 1)[1].strip() for line in rules.read_text().splitlines()
             if line.strip().startswith("- alert:")}  # fmt: skip
    assert {"UtilityAPIThrottled", "UtilityAPIAccountPaused", "OldestSubmittedTooOld",
            "WorkerHeartbeatMissing"} <= names  # fmt: skip
