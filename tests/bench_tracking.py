"""Collection tracking figures (a benchmark, not a test: nothing is asserted about speed).

    .venv/bin/pytest tests/bench_tracking.py -s -p no:cacheprovider

Not collected by the suite (the file name does not start with test_). Real parts throughout:
gunicorn serving the webhook (as the Procfile runs it), a real Celery worker, PostgreSQL,
Redis and the sandbox. Prints:
- webhook posts handled per second, each post a batch of 100 signed events (stored and
  answered; the worker applies them meanwhile);
- the lag from a meter's `finished_*` event (its post sent) to the request's outcome;
- the UtilityAPI calls one polling round spends on 10,000 unfinished meters.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from django.utils import timezone

from collections_app import polling
from collections_app.models import CollectionRequest, Event, MeterProgress, Status, VendorCall
from collections_app.services import tracking
from collections_app.webhooks import SALT_HEADER, SIGNATURE_HEADER, signature

from .conftest import ROOT, wait_until, worker_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]
SECRET = "bench-secret"
POSTS, BATCH, CLIENTS = 200, 100, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def web(sandbox: Any) -> Iterator[str]:
    """gunicorn on loopback against the test database, as the Procfile runs it."""
    port = free_port()
    env = worker_env(sandbox, UTILITYAPI_WEBHOOK_SECRET=SECRET, DJANGO_DEBUG="0")
    env.update(DJANGO_SECRET_KEY="bench", DJANGO_SECURE_SSL_REDIRECT="0")
    log = Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "gunicorn", "project.wsgi", "--bind", f"127.0.0.1:{port}",
           "--workers", "2", "--threads", "4"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(up, timeout=60, interval=0.2)
        yield url
    finally:
        process.terminate()
        process.wait(15)
        log.unlink(missing_ok=True)


def accepted(meters: list[str]) -> CollectionRequest:
    request = CollectionRequest.objects.create(
        meters=meters, accepted_meters=meters, status=Status.PENDING
    )
    tracking.begin([request])
    return request


def signed_post(session: requests.Session, url: str, events: list[dict[str, Any]]) -> float:
    raw = json.dumps({"events": events, "next": None}).encode()
    salt = os.urandom(8).hex()
    headers = {SALT_HEADER: salt, SIGNATURE_HEADER: signature(SECRET, salt, raw)}
    sent = time.time()
    response = session.post(f"{url}/webhooks/utilityapi/", data=raw, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return sent


def finish_event(uid: str, meter: str, stage: str = "finished_successful") -> dict[str, Any]:
    ts = timezone.now().isoformat()
    return {
        "uid": uid,
        "type": f"meter_historical_collection_{stage}",
        "ts": ts,
        "meter_uid": meter,
    }


def test_webhook_throughput_and_lag(web: str, start_worker: Callable[..., Any]) -> None:
    start_worker(concurrency=4)
    requests_by_batch = [accepted([f"b{b}-m{i}" for i in range(BATCH)]) for b in range(POSTS)]
    batches = [
        [finish_event(f"b{b}-e{i}", f"b{b}-m{i}") for i in range(BATCH)] for b in range(POSTS)
    ]
    sessions = [requests.Session() for _ in range(CLIENTS)]
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        sent = list(
            pool.map(lambda b: signed_post(sessions[b % CLIENTS], web, batches[b]), range(POSTS))
        )
    elapsed = time.monotonic() - started
    ids = [r.pk for r in requests_by_batch]
    wait_until(
        lambda: not CollectionRequest.objects.filter(pk__in=ids, collection_outcome=None).exists(),
        timeout=600,
        interval=0.5,
    )
    applied = time.monotonic() - started
    finished = dict(CollectionRequest.objects.values_list("pk", "collection_finished_at"))
    lags = [finished[r.pk].timestamp() - sent[b] for b, r in enumerate(requests_by_batch)]
    print(
        f"\nwebhook: {POSTS} posts of {BATCH} events from {CLIENTS} clients in {elapsed:.2f}s: "
        f"{POSTS / elapsed:.1f} posts/s ({POSTS * BATCH / elapsed:.0f} events/s stored)"
    )
    print(f"all {POSTS * BATCH} events applied and {POSTS} outcomes set {applied:.2f}s after start")
    print(
        f"lag, post of the last finished event → outcome: median {statistics.median(lags):.2f}s,"
        f" p95 {sorted(lags)[int(len(lags) * 0.95)]:.2f}s, max {max(lags):.2f}s"
    )
    assert Event.objects.count() == POSTS * BATCH


def test_lag_of_one_finished_event(web: str, start_worker: Callable[..., Any]) -> None:
    """The lag when the service is otherwise idle: one post, one event, one outcome."""
    start_worker(concurrency=4)
    lags = []
    session = requests.Session()
    for n in range(20):
        request = accepted([f"one-{n}"])
        sent = signed_post(session, web, [finish_event(f"one-e{n}", f"one-{n}")])
        wait_until(
            lambda pk=request.pk: CollectionRequest.objects.filter(
                pk=pk, collection_outcome__isnull=False
            ).exists(),
            timeout=30,
            interval=0.01,
        )
        done = CollectionRequest.objects.get(pk=request.pk).collection_finished_at
        assert done is not None
        lags.append(done.timestamp() - sent)
    print(f"\nidle lag, post → outcome (20 runs): median {statistics.median(lags) * 1000:.0f} ms,"
          f" max {max(lags) * 1000:.0f} ms")  # fmt: skip


def test_polling_calls_per_10000_unfinished_meters(
    sandbox: Any, redis_db: Any, settings: Any
) -> None:
    settings.COLLECTIONS_METER_POLL_AFTER_SECONDS = 60
    uids = [str(100000 + i) for i in range(10_000)]
    for start in range(0, len(uids), 1000):
        accepted(uids[start : start + 1000])
    MeterProgress.objects.update(accepted_at=timezone.now() - timedelta(hours=2))
    started = time.monotonic()
    counts = polling.poll()
    elapsed = time.monotonic() - started
    calls = list(VendorCall.objects.values_list("method", "endpoint", "status_code"))
    by_endpoint: dict[str, int] = {}
    for method, endpoint, code in calls:
        key = f"{method} {endpoint} → {code}"
        by_endpoint[key] = by_endpoint.get(key, 0) + 1
    print(f"\npolling 10,000 unfinished meters: {len(calls)} calls in {elapsed:.2f}s {by_endpoint}")
    print(f"  round: {counts}")
