"""Telling workers about due work (services/broker.py) against PostgreSQL and the Redis broker:
one message per POST the due rows need, a retried row announced when it falls due, and the
sweep that frees dead workers' rows."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from collections_app.exceptions import TransientError
from collections_app.models import CollectionRequest
from collections_app.services import broker, leases, outcomes

from .conftest import use_broker

pytestmark = pytest.mark.django_db


def stored(
    meters: int | list[str], duration: int | None = 12, age: float = 0, **fields: Any
) -> Any:
    """A submitted request due `age` seconds ago (negative: not yet due)."""
    uids = (
        [f"m-{uuid.uuid4().hex[:8]}" for _ in range(meters)] if isinstance(meters, int) else meters
    )
    return CollectionRequest.objects.create(
        meters=uids,
        collection_duration=duration,
        next_attempt_at=timezone.now() - timedelta(seconds=age),
        **fields,
    )


def posts_the_claims_make() -> int:
    """Claim until nothing is due, as the workers do: how many POSTs that took."""
    posts = 0
    while leases.claim(None, "t"):
        posts += 1
    return posts


@pytest.mark.parametrize(
    "sizes",
    [
        [6, 10, 4],  # a full request between two that share a POST
        [6, 6, 4, 4],  # each 6 shares its POST with a later 4
        [10, 10, 1],
        [3, 3, 3, 3, 3],
        [9, 2, 1, 8, 5, 5],
        [1] * 12,
    ],
)
def test_posts_needed_counts_the_posts_the_claims_make(settings: Any, sizes: list[int]) -> None:
    """The relay sends one message per POST: as many as the claims will make, not more (each
    extra message is a task that finds nothing to do)."""
    settings.COLLECTIONS_BATCH_MAX_METERS = 10
    for i, size in enumerate(sizes):
        stored(size, age=100 - i)
    rows = [(12, size) for size in sizes]
    assert broker.posts_needed(rows) == posts_the_claims_make()


def test_posts_needed_keeps_durations_apart(settings: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 10
    assert broker.posts_needed([(12, 6), (24, 4), (12, 4), (None, 4)]) == 3
    assert broker.posts_needed([(12, 11), (12, 10)]) == 2  # over the budget: alone too
    assert broker.posts_needed([]) == 0


def test_posts_needed_counts_up_to_a_limit(settings: Any) -> None:
    """The relay needs no more than MAX_MESSAGES: counting stops there, so a round's largest
    backlog (ANNOUNCE_ROWS rows, none sharing a POST) is counted in passing."""
    settings.COLLECTIONS_BATCH_MAX_METERS = 10
    assert broker.posts_needed([(12, 6)] * 5, most=3) == 3
    assert broker.posts_needed([(12, 6)] * 5, most=9) == 5
    settings.COLLECTIONS_BATCH_MAX_METERS = 1000
    rows = [(12, 600)] * broker.ANNOUNCE_ROWS
    assert broker.posts_needed(rows, most=broker.MAX_MESSAGES) == broker.MAX_MESSAGES


# --- announcing ------------------------------------------------------------------------------


def test_announcing_marks_only_due_free_unannounced_rows(redis_db: Any) -> None:
    due = stored(1, age=5)
    later = stored(1, age=-60)
    held = stored(
        1, age=5, lease_token=uuid.uuid4(), lease_expires_at=timezone.now() + timedelta(60)
    )
    told = stored(1, age=5, announced_at=timezone.now() - timedelta(seconds=1))
    failed = stored(1, age=5, status="failed")
    sent, next_due = broker.announce_due()
    assert sent == 1 and redis_db.llen("celery") == 1
    assert 55 < (next_due or 0) <= 60
    rows = {r.pk: r.announced_at for r in CollectionRequest.objects.all()}
    assert rows[due.pk] is not None and rows[later.pk] is None and rows[held.pk] is None
    assert rows[failed.pk] is None and rows[told.pk] < rows[due.pk]


def test_the_messages_sent_are_capped_per_round(settings: Any, redis_db: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 1
    CollectionRequest.objects.bulk_create(
        CollectionRequest(meters=[f"m{i}"], next_attempt_at=timezone.now()) for i in range(70)
    )
    assert broker.announce_due() == (broker.MAX_MESSAGES, None)
    assert redis_db.llen("celery") == broker.MAX_MESSAGES
    assert not CollectionRequest.objects.filter(announced_at__isnull=True).exists()


def test_a_backed_off_request_is_announced_when_it_falls_due_not_later(
    settings: Any, redis_db: Any
) -> None:
    """After a 5 s backoff the relay is told to wake in about 5 s, and then announces the row
    (it does not wait for the sweep, minutes later)."""
    settings.COLLECTIONS_RETRY_BASE_SECONDS = 5
    row = stored(1, age=1)
    assert broker.announce_due()[0] == 1
    batch = leases.claim(row.pk, "t")
    call = outcomes.Call(uuid.uuid4(), timezone.now(), 10, "t")
    outcomes.record_outcome(batch, TransientError("http_503", "down", status_code=503), call)
    sent, next_due = broker.announce_due()
    assert sent == 0 and next_due is not None and 2 <= next_due <= 5
    CollectionRequest.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    assert broker.announce_due() == (1, None)
    assert redis_db.llen("celery") == 2


def test_the_next_due_time_counts_only_unannounced_submitted_rows() -> None:
    now = timezone.now()
    assert broker.seconds_until_next_due(now) is None
    stored(1, age=-100, announced_at=now)
    stored(1, age=-100, status="failed")
    stored(1, age=5)  # already due: not "next"
    assert broker.seconds_until_next_due(now) is None
    stored(1, age=-30)
    stored(1, age=-90)
    assert broker.seconds_until_next_due(now) == pytest.approx(30, abs=1)


def test_publish_sends_that_many_messages(redis_db: Any) -> None:
    assert broker.publish(3) == 3
    assert redis_db.llen("celery") == 3
    body = json.loads(redis_db.lindex("celery", 0))
    assert body["headers"]["task"] == broker.DELIVER_TASK
    assert broker.publish(0) == 0


def test_requeue_has_the_rows_announced_again_at_their_time() -> None:
    now = timezone.now()
    rows = [stored(1, age=-i, announced_at=now) for i in range(3)]
    before = [r.next_attempt_at for r in rows]
    broker.requeue([r.pk for r in rows[:2]])
    after = CollectionRequest.objects.order_by("next_attempt_at").reverse()
    fresh = {r.pk: r for r in after}
    assert [fresh[r.pk].announced_at for r in rows] == [None, None, now]
    assert [fresh[r.pk].next_attempt_at for r in rows] == before


# --- the sweep --------------------------------------------------------------------------


def test_the_sweep_frees_only_rows_whose_lease_ran_out(settings: Any, redis_db: Any) -> None:
    now = timezone.now()
    dead = stored(1, age=5, lease_token=uuid.uuid4(), lease_expires_at=now - timedelta(1))
    alive = stored(1, age=5, lease_token=uuid.uuid4(), lease_expires_at=now + timedelta(60))
    done = stored(
        1, status="pending", lease_token=uuid.uuid4(), lease_expires_at=now - timedelta(1)
    )
    assert broker.sweep() == {"orphaned": 1, "requeued": 1}
    rows = {r.pk: r for r in CollectionRequest.objects.all()}
    assert rows[dead.pk].lease_token is None and rows[dead.pk].lease_expires_at is None
    assert rows[alive.pk].lease_token is not None
    assert rows[done.pk].lease_token is not None  # not the sweep's business


def test_the_sweep_announces_again_rows_told_long_ago(settings: Any, redis_db: Any) -> None:
    settings.COLLECTIONS_STUCK_AFTER_SECONDS = 60
    now = timezone.now()
    lost = stored(1, age=100, announced_at=now - timedelta(seconds=70))
    recent = stored(1, age=100, announced_at=now - timedelta(seconds=50))
    assert broker.sweep() == {"orphaned": 0, "requeued": 1}
    assert CollectionRequest.objects.get(pk=lost.pk).announced_at is None
    assert CollectionRequest.objects.get(pk=recent.pk).announced_at is not None


def test_the_sweep_notes_its_run_for_the_dashboard(redis_db: Any) -> None:
    stored(1, age=5, lease_token=uuid.uuid4(), lease_expires_at=timezone.now() - timedelta(1))
    before = time.time()
    broker.sweep()
    note = json.loads(redis_db.get(broker.SWEEP_KEY))
    assert note["orphaned"] == 1 and note["requeued"] == 1 and note["at"] >= before
    assert 86_000 < redis_db.ttl(broker.SWEEP_KEY) <= 86_400


def test_a_redis_outage_never_fails_the_sweep(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    stored(1, age=5, lease_token=uuid.uuid4(), lease_expires_at=timezone.now() - timedelta(1))
    assert broker.sweep() == {"orphaned": 1, "requeued": 1}


def test_a_dead_broker_is_logged_with_its_error_and_nothing_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The operator reads why due work waits: the broker's error, by its type."""
    use_broker("redis://127.0.0.1:9/0")  # nothing listens there
    try:
        assert broker.publish(2) == 0
    finally:
        use_broker(None)
    (line,) = [r.getMessage() for r in caplog.records if "broker unavailable" in r.getMessage()]
    assert line == "broker unavailable (OperationalError): due work waits for it"


def test_the_sweep_logs_what_it_did_and_a_note_it_could_not_store(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    stored(1, age=5, lease_token=uuid.uuid4(), lease_expires_at=timezone.now() - timedelta(1))
    broker.sweep()
    lines = [r.getMessage() for r in caplog.records]
    assert "sweep: 1 orphaned, 1 announced again" in lines
    assert "cannot record the sweep's run: ConnectionError" in lines
