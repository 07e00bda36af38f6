"""Leases against PostgreSQL (services/leases.py): what a claim takes (only due, free,
submitted rows; companions within one POST's meter budget), and a lease that covers the POST."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from collections_app.models import CollectionRequest, Status
from collections_app.services import broker, leases

pytestmark = pytest.mark.django_db


def stored(meters: list[str], duration: int | None = 12, age: float = 0, **fields: Any) -> Any:
    """A submitted request due `age` seconds ago."""
    return CollectionRequest.objects.create(
        meters=meters,
        collection_duration=duration,
        next_attempt_at=timezone.now() - timedelta(seconds=age),
        **fields,
    )


def meters_of(batch: list[CollectionRequest]) -> int:
    return sum(len(r.meters) for r in batch)


@pytest.fixture(autouse=True)
def timings(settings: Any) -> None:
    settings.UTILITYAPI_CONNECT_TIMEOUT = 5
    settings.UTILITYAPI_READ_TIMEOUT = 30
    settings.COLLECTIONS_LEASE_MARGIN_SECONDS = 30
    settings.COLLECTIONS_BATCH_MAX_METERS = 1000


def test_a_coalesced_post_never_carries_more_than_the_meter_budget(settings: Any) -> None:
    """A coalesced POST never carries more than COLLECTIONS_BATCH_MAX_METERS meters: each
    companion taken uses up its share of the budget."""
    settings.COLLECTIONS_BATCH_MAX_METERS = 5
    head = stored(["h"], age=10)
    for i in range(4):
        stored([f"c{i}a", f"c{i}b"], age=9 - i)
    batch = leases.claim(head.pk, "t")
    assert meters_of(batch) == 5 and len(batch) == 3


def test_the_budget_counts_the_claimed_request_once(settings: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 4
    head = stored(["h1", "h2"], age=10)
    other = stored(["o1", "o2"], age=5)
    assert {r.pk for r in leases.claim(head.pk, "t")} == {head.pk, other.pk}


def test_smaller_requests_past_one_too_big_still_fill_the_post(settings: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 3
    head = stored(["h"], age=10)
    too_big = stored(["b1", "b2", "b3"], age=9)
    small = stored(["s"], age=8)
    batch = leases.claim(head.pk, "t")
    assert {r.pk for r in batch} == {head.pk, small.pk} and too_big.pk not in batch


def test_a_request_that_fills_the_budget_goes_alone(settings: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 2
    full = stored(["f1", "f2"], age=10)
    stored(["x"], age=9)
    assert [r.pk for r in leases.claim(full.pk, "t")] == [full.pk]


def test_with_coalescing_off_every_request_goes_alone(settings: Any) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 1
    first = stored(["a"], age=10)
    stored(["b"], age=9)
    assert [r.pk for r in leases.claim(first.pk, "t")] == [first.pk]


def test_the_named_request_is_claimed_not_the_oldest_due_one() -> None:
    oldest = stored(["o"], duration=6, age=60)
    named = stored(["n"], duration=12, age=1)
    assert [r.pk for r in leases.claim(named.pk, "t")] == [named.pk]
    assert [r.pk for r in leases.claim(None, "t")] == [oldest.pk]


def test_without_a_name_the_longest_due_request_is_claimed_first() -> None:
    stored(["b"], duration=6, age=5)
    oldest = stored(["a"], duration=12, age=50)
    stored(["c"], duration=24, age=20)
    assert [r.pk for r in leases.claim(None, "t")] == [oldest.pk]


def test_companions_are_the_longest_due_first_and_the_batch_in_creation_order(
    settings: Any,
) -> None:
    settings.COLLECTIONS_BATCH_MAX_METERS = 3
    first = stored(["a"], age=1)
    second = stored(["b"], age=30)
    third = stored(["c"], age=20)
    stored(["d"], age=2)  # due last: no room left for it
    batch = leases.claim(first.pk, "t")
    assert [r.pk for r in batch] == [first.pk, second.pk, third.pk]


@pytest.mark.parametrize(
    "fields",
    [
        {"status": Status.FAILED},
        {"status": Status.PENDING},
        {"lease_token": uuid.uuid4(), "lease_expires_at_in": 10},
    ],
)
def test_only_due_submitted_unleased_rows_are_claimed(fields: dict[str, Any]) -> None:
    """A failed or pending row, or one another worker holds, is never claimed, alone or as a
    companion, even though its next attempt is due."""
    lease_in = fields.pop("lease_expires_at_in", None)
    if lease_in is not None:
        fields["lease_expires_at"] = timezone.now() + timedelta(seconds=lease_in)
    busy = stored(["x"], age=50, **fields)
    free = stored(["y"], age=1)
    assert leases.claim(busy.pk, "t") == []
    assert [r.pk for r in leases.claim(None, "t")] == [free.pk]


def test_a_request_not_yet_due_is_not_claimed() -> None:
    later = stored(["x"], age=-30)
    assert leases.claim(later.pk, "t") == [] and leases.claim(None, "t") == []


def test_a_claim_leases_every_row_for_the_post_and_its_timeouts() -> None:
    """The lease covers the HTTP timeouts and the margin (5 + 30 + 30 s here); every row of
    the batch shares one token and names the task that holds it."""
    head = stored(["a"], age=5)
    stored(["b"], age=4)
    before = timezone.now()
    batch = leases.claim(head.pk, "task-7")
    after = timezone.now()
    rows = CollectionRequest.objects.filter(pk__in=[r.pk for r in batch])
    assert len(batch) == 2 and {r.lease_token for r in rows} == {batch[0].lease_token}
    assert batch[0].lease_token is not None
    for row in rows:
        assert row.task_id == "task-7"
        assert before + timedelta(seconds=65) <= row.lease_expires_at <= after + timedelta(65)


def test_lease_seconds_are_the_timeouts_and_the_margin(settings: Any) -> None:
    settings.UTILITYAPI_CONNECT_TIMEOUT = 2
    settings.UTILITYAPI_READ_TIMEOUT = 7
    settings.COLLECTIONS_LEASE_MARGIN_SECONDS = 11
    assert leases.lease_seconds() == 20


def test_nothing_due_claims_nothing() -> None:
    assert leases.claim(None, "t") == []
    assert leases.claim(uuid.uuid4(), "t") == []


# --- renewing the lease right before the POST --------------------------------------------------


def test_a_lease_about_to_run_out_is_renewed_to_cover_the_whole_post() -> None:
    """A lease renewed before the POST lasts the POST's timeouts and margin from now, so the
    sweep cannot free the row mid-POST and have it sent twice."""
    head = stored(["a"], age=5)
    stored(["b"], age=4)
    batch = leases.claim(head.pk, "t")
    soon = timezone.now() + timedelta(seconds=1)
    for row in batch:
        row.lease_expires_at = soon
    CollectionRequest.objects.update(lease_expires_at=soon)
    before = timezone.now()
    leases.renew(batch)
    after = timezone.now()
    assert len(batch) == 2
    for row in CollectionRequest.objects.all():
        assert before + timedelta(seconds=65) <= row.lease_expires_at <= after + timedelta(65)
    assert all(before + timedelta(seconds=65) <= r.lease_expires_at for r in batch)
    assert broker.sweep()["orphaned"] == 0
    assert leases.claim(None, "other") == []


def test_renewing_touches_only_rows_still_leased_to_the_batch() -> None:
    (mine,) = leases.claim(stored(["a"], age=5).pk, "t")
    soon = timezone.now() + timedelta(seconds=1)
    mine.lease_expires_at = soon
    taken_over = timezone.now() + timedelta(seconds=40)
    CollectionRequest.objects.filter(pk=mine.pk).update(
        lease_token=uuid.uuid4(), lease_expires_at=taken_over
    )
    leases.renew([mine])
    assert CollectionRequest.objects.get(pk=mine.pk).lease_expires_at == taken_over


def test_a_fresh_lease_is_not_written_again(settings: Any) -> None:
    """A lease with more than half its margin left already covers the POST: no query."""
    (row,) = leases.claim(stored(["a"], age=5).pk, "t")
    row.lease_expires_at = timezone.now() + timedelta(seconds=65 - 14)
    with CaptureQueriesContext(connection) as queries:
        leases.renew([row])
    assert len(queries) == 0


def test_a_lease_with_less_than_half_its_margin_left_is_renewed() -> None:
    (row,) = leases.claim(stored(["a"], age=5).pk, "t")
    row.lease_expires_at = timezone.now() + timedelta(seconds=65 - 16)
    before = timezone.now()
    leases.renew([row])
    assert row.lease_expires_at >= before + timedelta(seconds=65)
    stored_row = CollectionRequest.objects.get(pk=row.pk)
    assert stored_row.lease_expires_at == row.lease_expires_at


def test_a_row_without_a_lease_end_gets_one() -> None:
    (row,) = leases.claim(stored(["a"], age=5).pk, "t")
    row.lease_expires_at = None
    leases.renew([row])
    assert row.lease_expires_at is not None and row.lease_expires_at > timezone.now()


# --- still_held ---------------------------------------------------------------------------


def test_still_held_leaves_out_rows_another_worker_took_over(settings: Any) -> None:
    first, second, third = (stored([m], age=5 - i) for i, m in enumerate("abc"))
    batch = leases.claim(first.pk, "t")
    assert len(batch) == 3
    CollectionRequest.objects.filter(pk=second.pk).update(lease_token=uuid.uuid4())
    assert [r.pk for r in leases.still_held(batch)] == [first.pk, third.pk]
    assert leases.still_held([]) == []
