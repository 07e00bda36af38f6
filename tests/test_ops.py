"""The ops dashboard: figures against hand-built rows (exact numbers), access control, the
JSON and Prometheus outputs, and the machinery probes against real Redis, a real worker and a
dead broker. PostgreSQL throughout, never mocked."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from collections_app import services
from collections_app.gate import pauses
from collections_app.models import Attempt, CollectionRequest, Status
from collections_app.ops import figures, metrics, prometheus
from collections_app.services import leases
from sandbox import sample

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 25, 12, 7, 30, tzinfo=UTC)
DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """The worker probe remembers how many workers answered; each test starts afresh."""
    cache.clear()
    yield
    cache.clear()


def make(status: str, created: datetime, updated: datetime | None = None, **fields: Any) -> Any:
    """A request row with the given status and times (auto_now fields overwritten)."""
    row = CollectionRequest.objects.create(meters=["m-1"], status=status, **fields)
    CollectionRequest.objects.filter(pk=row.pk).update(created=created, updated=updated or created)
    return row


def attempt(request: Any, started: datetime, code: int | None, call_id: Any = None) -> None:
    Attempt.objects.create(
        request=request, call_id=call_id or uuid.uuid4(), started=started, status_code=code
    )


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def recent(**delta: float) -> datetime:
    """For tests through the views, which read the real clock."""
    return timezone.now() - timedelta(**delta)


def staff_client(django_user_model: Any, username: str = "op", view: bool = True) -> Client:
    """A staff member's session; with the permission to view collection requests unless
    `view` is False."""
    user = django_user_model.objects.create_user(username, is_staff=True)
    if view:
        user.user_permissions.add(Permission.objects.get(codename="view_collectionrequest"))
    client = Client()
    client.force_login(user)
    return client


# --- the figures, exactly --------------------------------------------------------------------


def test_status_counts() -> None:
    for status, n in [(Status.SUBMITTED, 2), (Status.PENDING, 3), (Status.FAILED, 1)]:
        for _ in range(n):
            make(status, ago(hours=1))
    assert figures.status_counts() == {"submitted": 2, "pending": 3, "failed": 1, "total": 6}


def test_timeline_counts_per_15_minutes_over_24_hours() -> None:
    # NOW is 12:07:30: its bucket starts at 12:00, the one before at 11:45.
    make(Status.PENDING, created=ago(minutes=5), updated=ago(minutes=2))  # 12:00, both
    make(Status.PENDING, created=ago(minutes=20), updated=ago(minutes=5))  # 11:45, then 12:00
    make(Status.FAILED, created=ago(minutes=21), updated=ago(minutes=16))  # 11:45, both
    make(Status.SUBMITTED, created=ago(hours=23, minutes=50))  # the first bucket (12:15)
    make(Status.PENDING, created=ago(hours=30), updated=ago(hours=30))  # before the window
    timeline = figures.timeline(NOW)
    buckets = {b["t"]: b for b in timeline["buckets"]}
    assert len(buckets) == 96 and timeline["bucket_minutes"] == 15
    assert timeline["start"] == datetime(2026, 11, 24, 12, 15, tzinfo=UTC)
    noon, quarter_to = NOW.replace(minute=0, second=0), NOW.replace(hour=11, minute=45, second=0)
    assert _counts(buckets[noon]) == (1, 2, 0)
    assert _counts(buckets[quarter_to]) == (2, 0, 1)
    assert _counts(buckets[timeline["start"]]) == (1, 0, 0)
    assert sum(b["created"] for b in timeline["buckets"]) == 4


def _counts(bucket: dict[str, Any]) -> tuple[int, int, int]:
    return bucket["created"], bucket["accepted"], bucket["failed"]


def test_retry_pipeline() -> None:
    later, soon = NOW + timedelta(minutes=5), NOW + timedelta(seconds=40)
    make(Status.SUBMITTED, ago(minutes=3), attempts=2, next_attempt_at=later)  # waiting retry
    make(Status.SUBMITTED, ago(minutes=3), attempts=1, next_attempt_at=ago(seconds=5))  # due
    make(Status.SUBMITTED, ago(minutes=1), attempts=0, next_attempt_at=soon)  # deferred
    make(Status.SUBMITTED, ago(minutes=1), attempts=0, next_attempt_at=ago(seconds=1))  # due
    make(Status.PENDING, ago(minutes=9), attempts=3)  # not in the pipeline
    retries = figures.retry_pipeline(NOW)
    assert retries["due_now"] == 2
    assert retries["waiting_retry"] == 3  # attempts > 0, or a later next_attempt_at
    assert retries["next_due_at"] == soon
    assert retries["attempts_histogram"] == {"0": 2, "1": 1, "2": 1}


def test_throttled_calls_count_posts_not_requests() -> None:
    batch = [make(Status.SUBMITTED, ago(minutes=30)) for _ in range(3)]
    call = uuid.uuid4()
    for row in batch:  # one POST carrying three requests, answered 429
        attempt(row, ago(minutes=30), 429, call)
    attempt(batch[0], ago(minutes=10), 429)
    attempt(batch[0], ago(minutes=70), 429)  # more than an hour ago
    attempt(batch[1], ago(minutes=5), 503)
    throttled = figures.throttled_calls(NOW)
    assert throttled == {"calls_last_hour": 2, "last_at": ago(minutes=10)}


def test_stalls(settings: Any) -> None:
    settings.OPS_STALL_WARNING_SECONDS = 300
    margin = settings.COLLECTIONS_LEASE_MARGIN_SECONDS
    make(Status.SUBMITTED, ago(minutes=12), next_attempt_at=ago(minutes=6))  # overdue
    make(Status.SUBMITTED, ago(minutes=2), next_attempt_at=ago(minutes=1))  # due, not overdue
    make(Status.SUBMITTED, ago(minutes=8), next_attempt_at=ago(minutes=7),
         lease_expires_at=NOW + timedelta(seconds=margin - 10))  # fmt: skip
    make(Status.SUBMITTED, ago(minutes=1), next_attempt_at=ago(minutes=1),
         lease_expires_at=NOW + timedelta(seconds=leases.lease_seconds() - 1))  # fmt: skip
    make(Status.PENDING, ago(hours=5))
    stalls = figures.stalls(NOW)
    assert stalls["oldest_submitted_age_seconds"] == 12 * 60
    assert stalls["overdue"] == 1  # the claimed one is running, not waiting
    assert stalls["long_running"] == 1
    assert stalls["longest_running_seconds"] == pytest.approx(figures.http_timeout() + 10)


def test_failure_groups_with_latest_description_and_admin_link() -> None:
    make(Status.FAILED, ago(hours=30), error="not_found", error_description="old words")
    make(Status.FAILED, ago(minutes=30), error="not_found", error_description="None exist.")
    make(Status.FAILED, ago(hours=2), error="retries_exhausted", error_description="Gave up")
    make(Status.PENDING, ago(minutes=5))
    groups = figures.failure_groups(NOW)
    assert [(g["error"], g["count"], g["last_24h"], g["last_hour"]) for g in groups] == [
        ("not_found", 2, 1, 1),
        ("retries_exhausted", 1, 1, 0),
    ]
    assert groups[0]["sample"] == "None exist." and groups[0]["latest_at"] == ago(minutes=30)
    assert groups[0]["admin_url"] == (
        "/admin/collections_app/collectionrequest/?status__exact=failed&error=not_found"
    )


def test_failure_group_link_filters_the_admin_list(django_user_model: Any) -> None:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("boss", password=None))
    wanted = make(Status.FAILED, ago(minutes=3), error="not_found")
    other = make(Status.FAILED, ago(minutes=3), error="invalid_param")
    retried = make(Status.SUBMITTED, ago(minutes=3), error="not_found")
    response = client.get(figures.failed_admin_url("not_found"))
    assert response.status_code == 200  # not the admin's "?e=1" redirect for a bad filter
    listed = {str(r.pk) for r in response.context["cl"].result_list}
    assert listed == {str(wanted.pk)}
    assert str(other.pk) not in listed and str(retried.pk) not in listed


# --- access ---------------------------------------------------------------------------------


def test_anonymous_and_non_staff_are_sent_to_the_admin_login(django_user_model: Any) -> None:
    anonymous = Client().get("/ops/")
    assert anonymous.status_code == 302
    assert anonymous["Location"] == "/admin/login/?next=/ops/"
    client = Client()
    client.force_login(django_user_model.objects.create_user("clerk"))
    assert client.get("/ops/")["Location"] == "/admin/login/?next=/ops/"


def test_json_refuses_non_staff_with_403(django_user_model: Any) -> None:
    assert Client().get("/ops/metrics.json").status_code == 403
    client = Client()
    client.force_login(django_user_model.objects.create_user("clerk"))
    response = client.get("/ops/metrics.json")
    assert response.status_code == 403 and response.json() == {"error": "staff login required"}


def test_staff_sees_the_page_with_the_figures(django_user_model: Any, redis_db: Any) -> None:
    make(Status.FAILED, recent(minutes=1), error="payment_required", error_description="Pay up")
    response = staff_client(django_user_model).get("/ops/")
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    page = response.content.decode()
    assert 'id="ops-snapshot"' in page and "dashboard.js" in page
    initial = response.context["snapshot"]
    assert initial["status"]["failed"] == 1
    assert initial["failures"][0]["error"] == "payment_required"


def test_json_carries_the_figures(django_user_model: Any, redis_db: Any) -> None:
    make(Status.PENDING, recent(minutes=1))
    make(Status.FAILED, recent(minutes=1), error="not_found", error_description="None exist.")
    response = staff_client(django_user_model).get("/ops/metrics.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    data = json.loads(response.content)
    assert data["status"] == {"submitted": 0, "pending": 1, "failed": 1, "total": 2}
    assert data["failures"][0]["sample"] == "None exist."
    assert sum(b["failed"] for b in data["timeline"]["buckets"]) == 1
    assert data["machinery"]["redis"]["ok"] is True and data["machinery"]["database"]["ok"]
    assert data["panels"]["failures"] == "warn"  # a failure in the last hour
    assert data["state"] == "bad"  # no worker answers in this test


def test_staff_without_the_view_permission_see_no_figures(
    django_user_model: Any, settings: Any
) -> None:
    """The figures describe every request: like the API, they need view_collectionrequest;
    the /metrics bearer token still works without a session."""
    settings.METRICS_TOKEN = "s3cret-token"
    client = staff_client(django_user_model, "no-view", view=False)
    assert client.get("/ops/").status_code == 403
    refused = client.get("/ops/metrics.json")
    assert refused.status_code == 403 and "view_collectionrequest" in refused.json()["error"]
    assert client.get("/metrics").status_code == 401
    token = Client().get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert token.status_code == 200


# --- Prometheus -----------------------------------------------------------------------------


def scrape(client: Client, **headers: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def test_prometheus_needs_a_token_or_staff(
    django_user_model: Any, settings: Any, redis_db: Any
) -> None:
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    settings.METRICS_TOKEN = "s3cret-token"
    wrong = Client().get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    assert scrape(Client(), Authorization="Bearer s3cret-token")
    assert scrape(staff_client(django_user_model))


def test_prometheus_carries_the_figures(
    django_user_model: Any, settings: Any, redis_db: Any
) -> None:
    make(Status.SUBMITTED, recent(minutes=1), attempts=2, next_attempt_at=timezone.now())
    make(Status.FAILED, recent(minutes=1), error="not_found")
    make(Status.FAILED, recent(minutes=2), error="not_found")
    pauses.pause("throttle", 30, "429 from UtilityAPI: Retry-After 30s")
    samples = scrape(staff_client(django_user_model))
    assert samples[("collections_requests", (("status", "failed"),))] == 2
    assert samples[("collections_requests", (("status", "submitted"),))] == 1
    assert samples[("collections_failed_requests", (("error", "not_found"),))] == 2
    assert samples[("collections_submitted_by_attempts", (("attempts", "2"),))] == 1
    assert samples[("collections_rate_limit_per_second", ())] == settings.UTILITYAPI_RATE_LIMIT
    assert 28 < samples[("collections_pause_seconds_left", (("kind", "throttle"),))] <= 30
    assert samples[("collections_up", (("component", "redis"),))] == 1
    assert samples[("collections_up", (("component", "workers"),))] == 0


# --- the machinery ---------------------------------------------------------------------------


def test_dead_broker_answers_quickly_and_red(django_user_model: Any, settings: Any) -> None:
    settings.CELERY_BROKER_URL = settings.REDIS_URL = DEAD_BROKER
    client = staff_client(django_user_model)
    started = time.monotonic()
    data = client.get("/ops/metrics.json").json()
    assert time.monotonic() - started < 2.0
    machinery = data["machinery"]
    assert machinery["redis"]["ok"] is False and machinery["redis"]["error"]
    assert machinery["workers"] == {"ok": False, "count": 0, "names": [], "error": "no broker"}
    assert data["throttling"]["pauses"] is None  # unknown, not "none"
    assert data["state"] == "bad" and data["panels"]["machinery"] == "bad"
    assert any(a["message"].startswith("Redis does not answer") for a in data["alerts"])
    samples = scrape(client)
    assert samples[("collections_up", (("component", "redis"),))] == 0


@pytest.mark.django_db(transaction=True)
def test_database_trouble_still_gives_a_red_snapshot(redis_db: Any) -> None:
    """Another session locks the requests table; the figures time out, the probes still answer."""
    db = connection.settings_dict
    other = psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"] or "postgres",
        dbname=db["NAME"], autocommit=True,
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    try:
        with other.transaction():
            other.execute("LOCK TABLE collections_app_collectionrequest IN ACCESS EXCLUSIVE MODE")
            snap = metrics.snapshot()
            names = {family.name for family in prometheus.OpsCollector().collect()}
    finally:
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert snap["status"] is None and snap["failures"] == []
    assert snap["machinery"]["database"] == {"ok": False, "error": "OperationalError"}
    assert snap["machinery"]["redis"]["ok"] and snap["state"] == "bad"
    assert "Database unavailable (OperationalError)" in [a["message"] for a in snap["alerts"]]
    assert "collections_up" in names and "collections_requests" not in names


def test_account_pause_is_red_with_its_reason(redis_db: Any) -> None:
    pauses.pause("account", 120, "402 payment_required: Your account is past due.")
    snap = metrics.snapshot()
    (pause,) = snap["throttling"]["pauses"]
    assert pause["kind"] == "account" and 118 < pause["seconds_left"] <= 120
    assert "past due" in pause["reason"]
    assert snap["panels"]["throttling"] == "bad"
    assert any("UtilityAPI account unusable" in a["message"] for a in snap["alerts"])


def test_sweep_heartbeat(redis_db: Any) -> None:
    assert metrics.snapshot()["machinery"]["sweep"]["last_run_at"] is None
    services.sweep()
    sweep = metrics.snapshot()["machinery"]["sweep"]
    assert sweep["ok"] is True and sweep["age_seconds"] < 5


@pytest.mark.e2e
def test_live_worker_answers_and_is_counted(start_worker: Callable[..., Any]) -> None:
    worker = start_worker(concurrency=1)
    first = metrics.snapshot()["machinery"]["workers"]
    assert first["ok"] and worker.name in first["names"]
    started = time.monotonic()
    again = metrics.snapshot()["machinery"]["workers"]  # stops at the known count
    assert again["names"] == first["names"] and time.monotonic() - started < 0.4
    worker.stop()
    assert metrics.snapshot()["machinery"]["workers"]["ok"] is False


# --- performance -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_json_at_100k_requests_runs_the_same_few_queries(
    django_user_model: Any, start_worker: Callable[..., Any]
) -> None:
    """The figures are aggregates: their queries do not grow with the table, only by one per
    failure group shown (its latest description), at most FAILURE_GROUPS_SHOWN. (Their speed
    is the benchmark's business: `make bench`, scenario 10.)"""
    start_worker(concurrency=1)  # answering pings, as in production
    client = staff_client(django_user_model)
    with CaptureQueriesContext(connection) as empty:
        client.get("/ops/metrics.json")
    made = sample.build(100_000, 3)
    assert made[0] == 100_000 and 290_000 < made[1] < 310_000
    with CaptureQueriesContext(connection) as full:
        response = client.get("/ops/metrics.json")
    data = response.json()
    assert data["status"]["total"] == 100_000 and data["machinery"]["workers"]["count"] == 1
    groups = len(data["failures"])
    assert 0 < groups <= figures.FAILURE_GROUPS_SHOWN
    assert len(full.captured_queries) == len(empty.captured_queries) + groups


@pytest.mark.django_db(transaction=True)
def test_the_sample_data_leaves_its_tables_vacuumed_and_analyzed() -> None:
    """As autovacuum would soon after the load: the visibility map set (index-only scans) and
    the planner's row counts right, so the benchmark's plans are production's."""
    sample.build(200, 2)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reltuples, relallvisible FROM pg_class WHERE relname IN (%s, %s)",
            [CollectionRequest._meta.db_table, Attempt._meta.db_table],
        )
        stats = {name: (tuples, visible) for name, tuples, visible in cursor.fetchall()}
    requests, attempts = stats[CollectionRequest._meta.db_table], stats[Attempt._meta.db_table]
    assert requests[0] == 200 and requests[1] > 0
    assert attempts[0] == Attempt.objects.count() and attempts[1] > 0


# --- whole-table figures, shared between viewers --------------------------------------------


def test_whole_table_figures_are_shared_until_they_are_older_than_the_maximum_age(
    settings: Any,
) -> None:
    settings.OPS_FIGURES_MAX_AGE_SECONDS = 60
    make(Status.FAILED, ago(minutes=5), error="not_found")
    first = figures.business(NOW)
    make(Status.FAILED, ago(minutes=4), error="not_found")
    second = figures.business(NOW)
    # Counts come from the shared copy; what waits for a worker is read every time.
    assert first["status"]["failed"] == second["status"]["failed"] == 1
    assert second["figures_as_of"] == first["figures_as_of"]
    cache.set("ops:whole_table", {**cache.get("ops:whole_table"), "computed_at": 0})  # stale
    assert figures.business(NOW)["status"]["failed"] == 2


def test_stale_figures_are_served_while_another_viewer_recomputes_them(settings: Any) -> None:
    settings.OPS_FIGURES_MAX_AGE_SECONDS = 60
    make(Status.FAILED, ago(minutes=5))
    figures.business(NOW)
    make(Status.FAILED, ago(minutes=4))
    cache.set("ops:whole_table", {**cache.get("ops:whole_table"), "computed_at": 0})
    cache.add("ops:whole_table:lock", 1, 60)  # someone is recomputing
    assert figures.business(NOW)["status"]["failed"] == 1
    cache.delete("ops:whole_table:lock")
    assert figures.business(NOW)["status"]["failed"] == 2


def test_whole_table_figures_are_computed_when_the_cache_does_not_answer(settings: Any) -> None:
    settings.OPS_FIGURES_MAX_AGE_SECONDS = 60
    make(Status.FAILED, ago(minutes=5))
    settings.CACHES = {  # the cache handlers are rebuilt on this change
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                    "LOCATION": DEAD_BROKER, "OPTIONS": {"socket_connect_timeout": 0.2}},
    }  # fmt: skip
    assert figures.business(NOW)["status"]["failed"] == 1
