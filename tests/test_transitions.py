"""The status machine (services/transitions.py): only the table's moves, the fields set with
them, and the caller told about a request reaching pending or failed (and only then)."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from collections_app.models import CallbackDelivery, CollectionRequest, Status
from collections_app.services.transitions import TransitionError, transition
from collections_app.signals import request_resolved

pytestmark = pytest.mark.django_db


def stored(status: Status, **fields: Any) -> CollectionRequest:
    return CollectionRequest.objects.create(
        meters=["m-1"], status=status, next_attempt_at=timezone.now(), **fields
    )


@pytest.fixture
def resolved() -> Any:
    senders: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        senders.append((sender.pk, sender.status))

    request_resolved.connect(receiver)
    yield senders
    request_resolved.disconnect(receiver)


@pytest.mark.parametrize("to", [Status.PENDING, Status.FAILED])
def test_reaching_pending_or_failed_tells_the_caller_once_committed(
    to: Status, resolved: Any, django_capture_on_commit_callbacks: Any
) -> None:
    row = stored(Status.SUBMITTED)
    with django_capture_on_commit_callbacks(execute=True):
        transition(row, to, error="x")
        row.save()
    assert resolved == [(row.pk, to)] and row.error == "x"


def test_a_retry_or_a_resubmission_tells_nobody(
    resolved: Any, django_capture_on_commit_callbacks: Any
) -> None:
    again, retried = stored(Status.SUBMITTED), stored(Status.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        transition(again, Status.SUBMITTED, attempts=2)
        transition(retried, Status.SUBMITTED)
    assert resolved == [] and again.attempts == 2 and retried.status == Status.SUBMITTED


def test_a_request_with_a_callback_gets_the_attempt_of_the_status_it_reached() -> None:
    row = stored(Status.SUBMITTED, callback_url="https://8.8.8.8/hook")
    transition(row, Status.FAILED)
    (delivery,) = CallbackDelivery.objects.all()
    assert (delivery.request_id, delivery.moment) == (row.pk, "failed")


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (Status.PENDING, Status.SUBMITTED),
        (Status.PENDING, Status.FAILED),
        (Status.FAILED, Status.PENDING),
        (Status.FAILED, Status.FAILED),
    ],
)
def test_a_move_outside_the_table_is_refused_and_changes_nothing(start: Status, to: Status) -> None:
    row = CollectionRequest(meters=["m"], status=start, error="before")
    with pytest.raises(TransitionError) as caught:
        transition(row, to, error="after")
    assert str(caught.value) == f"{row.id}: {start} → {to} is not allowed"
    assert (row.status, row.error) == (start, "before")
