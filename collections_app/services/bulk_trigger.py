"""The bulk trigger: what collecting a selection of registered meters would do and cost, and
creating its requests once an operator has confirmed exactly that (the admin's action)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet

from ..models import COLLECTABLE, CollectionRequest, Meter, Source, Status
from .authorizations import refresh_lapsed
from .requests import request_collections


@dataclass(frozen=True)
class TriggerPlan:
    """What triggering a selection of meters would do; skip reasons may overlap."""

    selected: int
    collectable: int
    revoked: int
    expired: int
    archived: int
    waiting: int  # collectable meters whose last request has not been sent yet

    @property
    def skipped(self) -> int:
        return self.selected - self.collectable

    @property
    def requests(self) -> int:
        """How many collection requests the collectable meters are bundled into."""
        return -(-self.collectable // max_meters_per_request())


class TriggerConflict(Exception):
    """The selection changed after the confirmation page was shown; nothing was created."""


def max_meters_per_request() -> int:
    """Meters bundled into one collection request by the bulk trigger."""
    return settings.COLLECTIONS_MAX_METERS_PER_REQUEST


def plan(meters: QuerySet[Meter]) -> TriggerPlan:
    """Count the selection with one query: collectable meters and why the others are skipped
    (expiries passed since the last sync counted first)."""
    refresh_lapsed()
    counts = meters.order_by().aggregate(
        selected=Count("pk"),
        collectable=Count("pk", filter=COLLECTABLE),
        revoked=Count("pk", filter=Q(authorization_revoked=True)),
        expired=Count("pk", filter=Q(authorization_expired=True)),
        archived=Count("pk", filter=Q(is_archived=True)),
        waiting=Count("pk", filter=COLLECTABLE & Q(last_request__status=Status.SUBMITTED)),
    )
    return TriggerPlan(**counts)


def trigger(
    meters: QuerySet[Meter],
    collection_duration: int | None,
    *,
    requested_by: Any,
    expected: int,
    shown_at: datetime,
) -> list[CollectionRequest]:
    """Create collection requests for the selection's collectable meters, bundled
    COLLECTIONS_MAX_METERS_PER_REQUEST a request (storing them points each meter's
    last_request at its request). The requests are sent once the transaction commits.

    The meter rows stay locked until then, and the trigger is refused (TriggerConflict) when
    the collectable count is no longer `expected` or a meter was triggered after `shown_at`
    (a double submit, or another operator): the operator confirms what was shown, no more.
    """
    with transaction.atomic():
        refresh_lapsed()
        rows = meters.filter(COLLECTABLE).select_for_update(of=("self",)).order_by("uid")
        uids = list(rows.values_list("uid", flat=True))
        _check_unchanged(meters, uids, expected, shown_at)
        size = max_meters_per_request()
        groups = [uids[i : i + size] for i in range(0, len(uids), size)]
        return request_collections(
            groups, collection_duration, source=Source.REGISTRY, requested_by=requested_by
        )


def _check_unchanged(
    meters: QuerySet[Meter], uids: Sequence[str], expected: int, shown_at: datetime
) -> None:
    if not uids:
        raise TriggerConflict("None of the selected meters can be collected.")
    if len(uids) != expected:
        raise TriggerConflict(
            f"The selection changed since the page was shown: {len(uids)} collectable "
            f"meter(s) now, {expected} then. Check the numbers and confirm again."
        )
    recent = meters.filter(COLLECTABLE, last_request__created__gte=shown_at).count()
    if recent:
        raise TriggerConflict(
            f"{recent} of these meter(s) were triggered after this page was shown (a second "
            "submit, or another operator). Nothing was created."
        )
