"""End to end: a $30 daily budget, three $12 requests arriving at once, a real worker and the
sandbox. Two are sent; the third waits on hold, unsent, until a person approves it."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection

from collections_app import services
from collections_app.models import CollectionRequest, Hold, Status
from collections_app.services import budget

from .conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def sent_meters(sandbox: Any) -> list[str]:
    return sorted(m for call in sandbox.state.calls for m in call["meters"])


def test_only_two_of_three_concurrent_requests_are_sent_until_one_is_approved(
    settings: Any, worker: Any, sandbox: Any
) -> None:
    settings.COLLECTIONS_DAILY_BUDGET = Decimal("30")
    start = threading.Barrier(3)
    stored: list[CollectionRequest] = []

    def caller(meter: str) -> None:
        start.wait(5)
        try:
            stored.append(services.request_collection([meter], 12))
        finally:
            connection.close()

    threads = [threading.Thread(target=caller, args=(f"m-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    (held,) = [r for r in stored if r.hold == Hold.BUDGET]
    sent = [r for r in stored if r.hold is None]
    assert len(sent) == 2

    wait_until(lambda: CollectionRequest.objects.filter(status=Status.PENDING).count() == 2)
    time.sleep(1)  # a worker that would wrongly send the held one has had its chance
    held.refresh_from_db()
    assert held.status == Status.SUBMITTED and held.hold == Hold.BUDGET and held.attempts == 0
    assert sent_meters(sandbox) == sorted(m for r in sent for m in r.meters)

    approver = User.objects.create_user("approver", is_staff=True)
    approver.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_collectionrequest", "trigger_collection"])
    )
    budget.approve([held], User.objects.get(pk=approver.pk))
    wait_until(lambda: CollectionRequest.objects.get(pk=held.pk).status == Status.PENDING)
    assert sent_meters(sandbox) == ["m-0", "m-1", "m-2"]  # each sent once
