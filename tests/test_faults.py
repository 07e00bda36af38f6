"""Fault tests: real worker processes, real Redis and PostgreSQL, the sandbox on loopback.

Each test breaks one component while requests are in flight, then checks the final state of
every request and the POSTs the sandbox received against the count expected. The figures go
to a JSON summary (FAULTS_SUMMARY, default .pytest_cache/faults-summary.json) that
docs/reliability.md is written from. The shared Redis (6379) and PostgreSQL cluster are never
stopped: the Redis and PostgreSQL faults run on private servers started here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from django.db import transaction
from django.urls import reverse

from collections_app import services, tasks
from collections_app.models import Attempt, CollectionRequest, Status
from collections_app.services import broker

from .conftest import BROKER_IS_REDIS, ROOT, Worker, use_broker, wait_until, worker_env

pytestmark = [pytest.mark.fault, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SUMMARY_PATH = Path(
    os.environ.get("FAULTS_SUMMARY", str(ROOT / ".pytest_cache" / "faults-summary.json"))
)


# --- the summary --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def summary() -> Iterator[list[dict[str, Any]]]:
    """Rows for docs/reliability.md, written as JSON (and printed) when the module ends."""
    rows: list[dict[str, Any]] = []
    yield rows
    SUMMARY_PATH.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_PATH.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    for row in rows:
        print(json.dumps(row, default=str))


def report(summary: list[dict[str, Any]], fault: str, **figures: Any) -> None:
    summary.append({"fault": fault, **figures})


# --- helpers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def posts(sandbox: Any) -> list[dict[str, Any]]:
    return list(sandbox.state.calls)


def accepted_meters(sandbox: Any) -> Counter[str]:
    """How many answered-200 POSTs carried each meter."""
    return Counter(m for c in posts(sandbox) if c.get("status") == 200 for m in c["meters"] or [])


def states(ids: list[Any]) -> Counter[str]:
    return Counter(CollectionRequest.objects.filter(pk__in=ids).values_list("status", flat=True))


def all_left_submitted(ids: list[Any]) -> bool:
    return not CollectionRequest.objects.filter(pk__in=ids, status=Status.SUBMITTED).exists()


def sweeping(ids: list[Any]) -> Callable[[], bool]:
    """A wait_until predicate that runs the sweep (as beat would) until no id is submitted."""

    def done() -> bool:
        if all_left_submitted(ids):
            return True
        services.sweep()
        return False

    return done


# --- 1. a worker killed while its POST is in flight -----------------------------------------------


def test_worker_killed_mid_post_is_recovered_by_the_sweep(
    start_worker: Callable[..., Worker], sandbox: Any, summary: list[dict[str, Any]]
) -> None:
    """SIGKILL while the POST is at the sandbox: the answer is lost with the worker, so nobody
    can know whether UtilityAPI triggered the collection. The lease expires, the sweep frees
    the row and a restarted worker sends it again: at-least-once, so POSTs == 2 and the
    request ends `pending`. (Not sending again would leave it `submitted` for ever, or need a
    guess; UtilityAPI has no idempotency key, and re-triggering a running collection only
    collects the missing timespan, see docs/reliability.md.)"""
    sandbox.state.latency_ms = 1500
    first = start_worker(concurrency=1, UTILITYAPI_READ_TIMEOUT=3)
    request = services.request_collection(["kill-1"], 12)
    wait_until(lambda: posts(sandbox), timeout=10)
    first.kill()  # the POST is now in flight, its answer has nowhere to go
    row = CollectionRequest.objects.get(pk=request.pk)
    assert row.status == Status.SUBMITTED and row.lease_token is not None
    sandbox.state.latency_ms = 0
    start_worker(concurrency=1, UTILITYAPI_READ_TIMEOUT=3)
    started = time.monotonic()
    wait_until(sweeping([request.pk]), timeout=20, interval=0.25)
    recovered_after = time.monotonic() - started
    row = CollectionRequest.objects.get(pk=request.pk)
    calls = posts(sandbox)
    report(
        summary,
        "worker SIGKILLed during its POST, then restarted",
        requests=1,
        in_flight=1,
        final=dict(states([request.pk])),
        posts=len(calls),
        expected_posts=2,
        attempt_rows=row.http_attempts.count(),
        recovered_after_s=round(recovered_after, 1),
    )
    assert row.status == Status.PENDING and row.accepted_meters == ["kill-1"]
    assert [c["status"] for c in calls] == [200, 200]  # the in-flight one did arrive
    assert accepted_meters(sandbox) == {"kill-1": 2}
    assert row.attempts == 1 and row.http_attempts.count() == 1  # the lost answer left no row


# --- 2. Redis stops while requests are created ----------------------------------------------------


class PrivateRedis:
    """A disk-less redis-server of our own, so stopping it disturbs nobody else."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(self.answers, timeout=10)

    def answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def private_redis(settings: Any) -> Iterator[PrivateRedis]:
    """A Redis of our own as broker and shared state (these faults are Redis-broker ones)."""
    if not BROKER_IS_REDIS:
        pytest.skip("the broker is not Redis")
    server = PrivateRedis()
    settings.CELERY_BROKER_URL = settings.REDIS_URL = server.url
    use_broker(server.url)
    yield server
    server.stop()
    use_broker(None)


def api_available() -> bool:
    from django.urls import Resolver404, resolve

    try:
        resolve("/api/collections/")
        from collections_app.services import tokens  # noqa: F401
    except (Resolver404, ImportError):
        return False
    return True


def api_trigger(client: Any, user: Any, meters: list[str], duration: int) -> Any:
    from collections_app.services import tokens

    _, raw = tokens.issue(user, "faults")
    return client.post(
        "/api/collections/",
        {"meters": meters, "collection_duration": duration},
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )


def test_redis_outage_loses_no_request(
    start_worker: Callable[..., Worker],
    sandbox: Any,
    private_redis: PrivateRedis,
    client: Any,
    admin_user: Any,
    summary: list[dict[str, Any]],
) -> None:
    """Requests in flight when Redis stops record their outcome (one is a 402, whose fleet
    pause cannot be stored); a request whose message was queued is lost with Redis' data and
    found again by the sweep; requests created while Redis is down (service, admin, API) are
    stored, answered at once, and sent once it is back."""
    worker = start_worker(
        concurrency=2, CELERY_BROKER_URL=private_redis.url, REDIS_URL=private_redis.url
    )
    sandbox.state.latency_ms = 1000
    sandbox.state.script.append({"status": 402, "body": {"error": "payment_required"}})
    durations = iter(range(1, 37))  # one duration each: no coalescing, one POST per request
    in_flight = [services.request_collection([f"inflight-{i}"], next(durations)) for i in range(2)]
    wait_until(lambda: len(posts(sandbox)) == 2, timeout=10)
    queued = services.request_collection(["queued-0"], next(durations))  # both threads are busy
    assert CollectionRequest.objects.get(pk=queued.pk).dispatched_at is not None
    private_redis.stop()

    created, slowest = [], 0.0
    for i in range(3):
        began = time.monotonic()
        created.append(services.request_collection([f"service-{i}"], next(durations)).pk)
        slowest = max(slowest, time.monotonic() - began)
    client.force_login(admin_user)
    add = reverse("admin:collections_app_collectionrequest_add")
    for i in range(3):
        began = time.monotonic()
        data = {"meters": f"admin-{i}", "collection_duration": str(next(durations))}
        assert client.post(add, data).status_code == 302
        slowest = max(slowest, time.monotonic() - began)
    created += list(CollectionRequest.objects.filter(source="admin").values_list("pk", flat=True))
    if api_available():
        for i in range(3):
            began = time.monotonic()
            response = api_trigger(client, admin_user, [f"api-{i}"], next(durations))
            assert response.status_code == 202, response.content
            created.append(response.json()["id"])
            slowest = max(slowest, time.monotonic() - began)
    changelist = client.get(reverse("admin:collections_app_collectionrequest_changelist"))
    assert changelist.status_code == 200
    assert CollectionRequest.objects.filter(pk__in=created, status=Status.SUBMITTED).count() == len(
        created
    )
    # The in-flight POSTs were answered: their outcome is recorded without Redis.
    inflight_ids = [r.pk for r in in_flight]
    wait_until(lambda: all_left_submitted(inflight_ids), timeout=10)
    outage_posts = len(posts(sandbox))

    private_redis.start()  # empty: every message queued before the outage is gone too
    ids = [*inflight_ids, queued.pk, *created]
    sandbox.state.latency_ms = 0
    began = time.monotonic()
    wait_until(sweeping(ids), timeout=40, interval=0.5)
    calls = posts(sandbox)
    report(
        summary,
        "Redis killed (its data lost) with 2 POSTs in flight (one answered 402) and 1 queued; "
        "more created while it is down",
        requests=len(ids),
        in_flight=len(in_flight) + 1,
        created_during_outage=len(created),
        slowest_create_s=round(slowest, 2),
        posts_during_outage=outage_posts,
        final=dict(states(ids)),
        posts=len(calls),
        expected_posts=len(ids),
        recovered_after_s=round(time.monotonic() - began, 1),
    )
    assert states(ids) == {"pending": len(ids) - 1, "failed": 1}
    refused = CollectionRequest.objects.get(status=Status.FAILED)
    assert refused.pk in inflight_ids and refused.error == "payment_required"
    assert outage_posts == 2  # nothing was sent while Redis was down
    assert len(calls) == len(ids)
    assert set(accepted_meters(sandbox).values()) == {1}
    assert slowest < 5
    assert worker.process.poll() is None, "the worker exited when Redis went away"
    assert "Unrecoverable error" not in worker.output()
    assert "raised unexpected" not in worker.output()


def test_redis_hang_delays_creation_but_loses_nothing(
    start_worker: Callable[..., Worker],
    sandbox: Any,
    private_redis: PrivateRedis,
    client: Any,
    admin_user: Any,
    summary: list[dict[str, Any]],
) -> None:
    """Redis frozen (SIGSTOP: a network partition that drops packets looks the same): its port
    still accepts connections, so publishing waits for socket timeouts instead of failing
    fast. Requests are still stored; the caller waits; nothing is lost."""
    worker = start_worker(
        concurrency=2, CELERY_BROKER_URL=private_redis.url, REDIS_URL=private_redis.url
    )
    assert private_redis.process is not None
    services.request_collection(["warm-up"], 36)  # the publisher's connection is open
    wait_until(lambda: len(posts(sandbox)) == 1, timeout=10)
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    waits, ids = [], []
    try:
        began = time.monotonic()
        ids.append(services.request_collection(["hang-service"], 1).pk)
        waits.append(time.monotonic() - began)
        client.force_login(admin_user)
        if api_available():
            began = time.monotonic()
            response = api_trigger(client, admin_user, ["hang-api"], 2)
            waits.append(time.monotonic() - began)
            assert response.status_code == 202, response.content
            ids.append(response.json()["id"])
        began = time.monotonic()
        changelist = client.get(reverse("admin:collections_app_collectionrequest_changelist"))
        changelist_wait = time.monotonic() - began
        assert changelist.status_code == 200
        stored = CollectionRequest.objects.filter(pk__in=ids, status=Status.SUBMITTED).count()
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
    wait_until(sweeping(ids), timeout=40, interval=0.5)
    report(
        summary,
        "Redis frozen (SIGSTOP) while requests are created",
        requests=len(ids),
        in_flight=0,
        created_during_outage=len(ids),
        create_waits_s=[round(w, 1) for w in waits],
        changelist_wait_s=round(changelist_wait, 1),
        final=dict(states(ids)),
        posts=len(posts(sandbox)) - 1,
        expected_posts=len(ids),
    )
    assert stored == len(ids)
    assert states(ids) == {"pending": len(ids)}
    assert len(posts(sandbox)) - 1 == len(ids)
    assert max(waits) < 30  # under gunicorn's default 30 s worker timeout
    assert worker.process.poll() is None


# --- 3. PostgreSQL restarts while the worker runs -------------------------------------------------


def pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster in a temporary directory, so that restarting it
    disturbs nobody (as root, its tools run as the `postgres` user)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data, self.logfile = self.dir / "data", self.dir / "postgres.log"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/collections"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.tool("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl("-o", options, "start")
        with psycopg.connect(self.url.replace("/collections", "/postgres"), autocommit=True) as c:
            c.execute("CREATE DATABASE collections")

    def tool(self, name: str, *args: str) -> None:
        cmd = [str(self.bindir / name), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def pg_ctl(self, *args: str) -> None:
        # -l: the server's output goes to a file, not to our pipe (which it would hold open).
        self.tool("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", *args)

    def restart(self) -> float:
        """Restart with `-m fast`: every open connection is cut. Returns the seconds it took."""
        began = time.monotonic()
        self.pg_ctl("-m", "fast", "restart")
        return time.monotonic() - began

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=3) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

    def close(self) -> None:
        try:
            self.pg_ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed")
    server = PrivatePostgres(bindir)
    yield server
    server.close()


def django_command(env: dict[str, str], *args: str) -> str:
    """Run `manage.py ARGS` in a child process against env's database; returns its stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_postgres_restart_loses_no_request(
    start_worker: Callable[..., Worker],
    sandbox: Any,
    private_postgres: PrivatePostgres,
    summary: list[dict[str, Any]],
) -> None:
    """PostgreSQL restarts (fast: connections cut) while POSTs are in flight and more requests
    wait in the queue. Nothing is lost; every request is POSTed exactly once."""
    env = worker_env(sandbox, DATABASE_URL=private_postgres.url)
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    django_command(env, "migrate", "--noinput", "-v", "0")
    count = 8
    worker = start_worker(concurrency=4, DATABASE_URL=private_postgres.url)
    sandbox.state.latency_ms = 1500
    create = (
        "import json; from collections_app import services; print(json.dumps([str("
        f"services.request_collection([f'pg-{{i}}'], i + 1).pk) for i in range({count})]))"
    )
    ids = json.loads(django_command(env, "shell", "-c", create).strip().splitlines()[-1])
    wait_until(lambda: len(posts(sandbox)) >= 3, timeout=10)
    in_flight = len(posts(sandbox))
    restart_took = private_postgres.restart()
    sandbox.state.latency_ms = 0

    def settled() -> bool:
        rows = private_postgres.rows(
            "SELECT count(*) FROM collections_app_collectionrequest WHERE status = 'submitted'"
        )
        if rows[0][0] == 0:
            return True
        tasks.sweep.delay()  # as beat would: the worker runs it against the private database
        return False

    began = time.monotonic()
    wait_until(settled, timeout=40, interval=1)
    final = dict(
        private_postgres.rows(
            "SELECT status, count(*) FROM collections_app_collectionrequest GROUP BY status"
        )
    )
    calls = posts(sandbox)
    report(
        summary,
        "PostgreSQL restarted (-m fast) with POSTs in flight and requests queued",
        requests=count,
        in_flight=in_flight,
        restart_s=round(restart_took, 2),
        final=final,
        posts=len(calls),
        expected_posts=count,
        recovered_after_s=round(time.monotonic() - began, 1),
    )
    assert final == {"pending": count}
    stored = private_postgres.rows("SELECT id::text FROM collections_app_collectionrequest")
    assert sorted(row[0] for row in stored) == sorted(ids)  # nothing lost, nothing extra
    assert sorted(accepted_meters(sandbox)) == sorted(f"pg-{i}" for i in range(count))
    assert len(calls) == count, Counter(m for c in calls for m in c["meters"] or [])
    assert worker.process.poll() is None


# --- 4. a worker frozen mid-POST wakes up after its lease was taken over ------------------------


def test_frozen_worker_waking_late_does_not_overwrite_the_newer_outcome(
    start_worker: Callable[..., Worker], sandbox: Any, summary: list[dict[str, Any]]
) -> None:
    """A worker stopped (SIGSTOP: a paused VM, a long GC or swap storm) while its POST is in
    flight outlives its lease. The sweep hands the row to another worker, which sends it and
    records `pending`. When the first one wakes up it must not write its stale answer over
    that (here a 503, which would make the row `submitted` again and send it a third time)."""
    sandbox.state.latency_ms = 1000
    sandbox.state.script.append({"status": 503, "body": "maintenance"})
    frozen = start_worker(concurrency=1)
    request = services.request_collection(["frozen-1"], 12)
    wait_until(lambda: posts(sandbox), timeout=10)
    os.killpg(frozen.process.pid, signal.SIGSTOP)
    try:
        sandbox.state.latency_ms = 0
        start_worker(concurrency=1)
        wait_until(sweeping([request.pk]), timeout=20, interval=0.25)
    finally:
        os.killpg(frozen.process.pid, signal.SIGCONT)
    finished = re.compile(r"deliver\[[^]]+\] (succeeded|raised|retry)")
    wait_until(lambda: finished.search(frozen.output()), timeout=10)  # it woke up and recorded
    time.sleep(1.0)  # room for a wrongly re-dispatched request to be sent a third time
    row = CollectionRequest.objects.get(pk=request.pk)
    calls = posts(sandbox)
    report(
        summary,
        "worker SIGSTOPped during its POST past its lease, then resumed",
        requests=1,
        in_flight=1,
        final={row.status: 1},
        posts=len(calls),
        expected_posts=2,
        attempt_rows=row.http_attempts.count(),
    )
    assert row.status == Status.PENDING and row.error == ""
    assert [c["status"] for c in calls] == [503, 200]
    assert row.attempts == 1  # the stale answer is kept as an Attempt row only


# --- 5. UtilityAPI misbehaves -------------------------------------------------------------------

# (case, scripted answers, final status, final error, POSTs, the first attempt's error)
MISBEHAVIOUR = [
    ("hangs past the read timeout", [{"hang": 3}], "pending", "", 2, "timeout"),
    ("resets the connection", [{"reset": True}], "pending", "", 2, "connection_error"),
    ("200 with an HTML page", [{"body": "<html>proxy</html>"}], "pending", "", 2, "bad_response"),
    ("200 success without meters", [{"body": {"success": True}}], "pending", "", 2,
     "bad_response"),
    ("200 with a JSON array", [{"body": [{"success": True}]}], "pending", "", 2, "bad_response"),
    ("200 with a 20 MB body", [{"body": b"x" * 20_000_000}], "pending", "", 2, "bad_response"),
    ("200 with invalid UTF-8", [{"body": b"\xff\xfe\xfa{"}], "pending", "", 2, "bad_response"),
    ("200 success sent as text/plain", [{"headers": {"Content-Type": "text/plain"}}],
     "pending", "", 1, ""),
    ("200 with meters as a string", [{"body": {"success": True, "meters": "vendor-9"}}],
     "pending", "", 2, "bad_response"),
    ("204 with no body", [{"status": 204, "body": ""}], "pending", "", 2, "bad_response"),
    ("503 with binary garbage and NULs", [{"status": 503, "body": b"\x00\xff\x00<h1>\x00"}],
     "pending", "", 2, "http_503"),
    ("500 whose JSON error holds a NUL", [{"status": 500, "body": {"error": "server\u0000error",
     "error_description": "oops\u0000"}}], "failed", "server\ufffderror", 1, "server\ufffderror"),
    ("400 as HTML, not the error object", [{"status": 400, "body": "<h1>Bad</h1>"}], "failed",
     "http_400", 1, "http_400"),
    ("400 error object sent as text/html", [{"status": 400, "body": b'{"error": "invalid_param"'
     b', "error_description": "x"}', "headers": {"Content-Type": "text/html"}}], "failed",
     "invalid_param", 1, "invalid_param"),
    ("302 redirect", [{"status": 302, "headers": {"Location": "http://elsewhere.invalid/"},
     "body": ""}], "failed", "http_302", 1, "http_302"),
    ("resets on every attempt", [{"reset": True}] * 4, "failed", "retries_exhausted", 4,
     "connection_error"),
]  # fmt: skip


def test_utilityapi_misbehaviour_ends_in_a_defined_state(
    start_worker: Callable[..., Worker], sandbox: Any, summary: list[dict[str, Any]]
) -> None:
    """Each bad answer in turn: the request ends in a defined status with a clear error
    (transient: retried, then pending or retries_exhausted; permanent: failed at once), and
    the worker never crashes."""
    worker = start_worker(concurrency=2)
    outcomes = []
    for number, (case, answers, status, error, expected_posts, first_error) in enumerate(
        MISBEHAVIOUR
    ):
        before = len(posts(sandbox))
        sandbox.state.script.extend(answers)
        request = services.request_collection([f"vendor-{number}"], 12)
        wait_until(lambda r=request: all_left_submitted([r.pk]), timeout=20)
        row = CollectionRequest.objects.get(pk=request.pk)
        first = row.http_attempts.first()
        got = (row.status, row.error, len(posts(sandbox)) - before, first and first.error)
        outcomes.append((case, got, (status, error, expected_posts, first_error)))
        report(
            summary,
            f"UtilityAPI: {case}",
            requests=1,
            in_flight=1,
            final={row.status: 1},
            error=row.error or (first and first.error),
            posts=got[2],
            expected_posts=expected_posts,
        )
        assert first is not None and (first.error_description or first.status_code == 200)
        if row.status == Status.FAILED:
            assert row.error_description
    wrong = [(case, got, want) for case, got, want in outcomes if got != want]
    assert not wrong, wrong
    assert worker.process.poll() is None
    assert "raised unexpected" not in worker.output(), worker.output()[-3000:]


# --- 6. two workers race for the same requests ----------------------------------------------------


@pytest.mark.parametrize("batch_max_meters", [1, 10])
def test_two_workers_racing_post_each_request_once(
    start_worker: Callable[..., Worker],
    sandbox: Any,
    summary: list[dict[str, Any]],
    batch_max_meters: int,
) -> None:
    """200 requests due at the same moment, every message sent twice, two workers of four
    threads: each request is carried by exactly one POST. With batch_max_meters=1 there is no
    coalescing (200 POSTs); with 10, claims take companions under SKIP LOCKED."""
    sandbox.state.latency_ms = 20
    knobs = {"COLLECTIONS_BATCH_MAX_METERS": batch_max_meters, "UTILITYAPI_RATE_LIMIT": 2000}
    workers = [start_worker(concurrency=4, **knobs), start_worker(concurrency=4, **knobs)]
    count = 200
    began = time.monotonic()
    with transaction.atomic():  # all due together, all dispatched when this commits
        ids = [services.request_collection([f"race-{i}"], 12).pk for i in range(count)]
    broker.publish(len(ids))  # and every message a second time
    wait_until(sweeping(ids), timeout=60, interval=0.25)
    took = time.monotonic() - began
    calls = posts(sandbox)
    per_meter = accepted_meters(sandbox)
    call_ids = set(Attempt.objects.filter(request__in=ids).values_list("call_id", flat=True))
    sent_by = [w.output().count("request(s): 200") for w in workers]
    report(
        summary,
        f"two workers race for {count} requests (batch max {batch_max_meters} meters)",
        requests=count,
        in_flight=count,
        final=dict(states(ids)),
        posts=len(calls),
        expected_posts=count if batch_max_meters == 1 else f"{count // batch_max_meters}–{count}",
        posts_by_worker=sent_by,
        seconds=round(took, 1),
    )
    assert states(ids) == {"pending": count}
    assert per_meter == Counter({f"race-{i}": 1 for i in range(count)})
    assert sum(len(c["meters"] or []) for c in calls) == count  # no meter sent twice, at all
    assert len(calls) == len(call_ids)  # every POST the sandbox saw is on record
    assert Attempt.objects.filter(request__in=ids).count() == count
    if batch_max_meters == 1:
        assert len(calls) == count
    else:
        assert count // batch_max_meters <= len(calls) < count
    assert all(sent_by), sent_by  # both workers sent: it was a race
