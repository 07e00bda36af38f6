"""Data and invariants only: every write and status transition lives in the services package."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

# The rules every entry point shares, in one place (collections_app.validation applies them).
MIN_MONTHS, MAX_MONTHS = 1, 36  # the collection_duration UtilityAPI takes
UID_MAX_LENGTH = 64  # a meter uid, as stored
IDEMPOTENCY_KEY_MAX_LENGTH = 255
CALLBACK_URL_MAX_LENGTH = 2000
# Collections cost money: triggering one needs this permission besides "add".
TRIGGER_PERMISSION = "collections_app.trigger_collection"


class Status(models.TextChoices):
    SUBMITTED = "submitted", "Submitted"  # stored, waiting for or between attempts
    PENDING = "pending", "Pending"  # UtilityAPI accepted it: the meters' collection runs
    FAILED = "failed", "Failed"  # UtilityAPI refused it, or retries ran out


class CollectionOutcome(models.TextChoices):
    """How the vendor's collection ended, once every accepted meter has finished."""

    COLLECTED = "collected", "Collected"  # every accepted meter finished successfully
    PARTIALLY_COLLECTED = "partially_collected", "Partially collected"  # some did, some errored
    COLLECTION_ERRORED = "collection_errored", "Collection errored"  # none did


class Hold(models.TextChoices):
    """Why a submitted request waits for a person before it is sent."""

    BUDGET = "budget", "Over the budget"


# A held request rejected by a person fails with this error.
REJECTED_OVER_BUDGET = "rejected_over_budget"
MONEY_DIGITS, MONEY_PLACES = 12, 2  # dollars and cents


class Source(models.TextChoices):
    ADMIN = "admin", "Admin"
    API = "api", "API"
    CLI = "cli", "Command line"
    REGISTRY = "registry", "Meter registry"


class CollectionRequest(models.Model):
    """One historical collection asked for by a user; the database row is the source of truth."""

    # The fields users see, in the documented order: the JSON API's, the CLI's, the admin's.
    PUBLIC_FIELDS = (
        "id", "status", "meters", "collection_duration", "accepted_meters", "ignored_meters",
        "attempts", "next_attempt_at", "error", "error_description", "last_http_status",
        "source", "created", "updated", "collection_outcome", "collection_finished_at",
        "callback_url", "estimated_cost", "expected_cost", "hold", "hold_reason",
    )  # fmt: skip

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=16, choices=Status, default=Status.SUBMITTED)
    meters = models.JSONField(help_text="Meter uids, as asked.")
    collection_duration = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text=f"Months, {MIN_MONTHS}–{MAX_MONTHS}; empty means the account's default.",
    )
    accepted_meters = models.JSONField(default=list, blank=True)
    ignored_meters = models.JSONField(
        default=list, blank=True, help_text="Asked for, but dropped by UtilityAPI."
    )
    attempts = models.PositiveIntegerField(
        default=0, help_text="POSTs that carried this request (429 answers not counted)."
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=64, blank=True)
    error_description = models.TextField(blank=True)
    last_http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=Source, default=Source.API)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    idempotency_key = models.CharField(max_length=IDEMPOTENCY_KEY_MAX_LENGTH, blank=True)
    # Delivery bookkeeping: dispatched_at is when the row last entered the delivery queue
    # (stored, or retried by an operator); announced_at when a relay last told the workers
    # about it (empty: nobody has been told since it fell due); a worker that claims the row
    # holds it until lease_expires_at.
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    dispatched_at = models.DateTimeField(null=True, blank=True, editable=False)
    announced_at = models.DateTimeField(null=True, blank=True, editable=False)
    task_id = models.CharField(max_length=255, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    # Set once, when every accepted meter's collection has finished (services/tracking.py);
    # null until then, as the API shows it.
    collection_outcome = models.CharField(  # noqa: DJ001
        max_length=32,
        choices=CollectionOutcome,
        null=True,
        blank=True,
        help_text="Null while an accepted meter is still collecting, then how it ended.",
    )
    collection_finished_at = models.DateTimeField(
        null=True, blank=True, help_text="When the last accepted meter finished."
    )
    # Given at creation (collections_app.validation.clean_callback_url); null: none.
    callback_url = models.CharField(  # noqa: DJ001
        max_length=CALLBACK_URL_MAX_LENGTH,
        null=True,
        blank=True,
        help_text="Receives a signed POST at pending, failed and the collection's outcome.",
    )
    # Money (services/budget.py): the estimate when stored, from the price table; the expected
    # charge once every accepted meter has finished (the vendor bills months collected only).
    estimated_cost = models.DecimalField(
        max_digits=MONEY_DIGITS,
        decimal_places=MONEY_PLACES,
        default=0,
        help_text="Dollars, from the price table when the request was stored.",
    )
    expected_cost = models.DecimalField(
        max_digits=MONEY_DIGITS,
        decimal_places=MONEY_PLACES,
        null=True,
        blank=True,
        help_text="Dollars, once the collection has finished.",
    )
    hold = models.CharField(  # noqa: DJ001
        max_length=16,
        choices=Hold,
        null=True,
        blank=True,
        help_text="Why it waits for a person's approval before it is sent; null: it does not.",
    )
    hold_reason = models.TextField(null=True, blank=True)  # noqa: DJ001
    admitted_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When it was let through to be sent."
    )

    class Meta:
        ordering = ["-created"]
        permissions = [("trigger_collection", "Can trigger paid UtilityAPI collections")]
        constraints = [
            models.CheckConstraint(
                condition=Q(collection_duration__isnull=True)
                | Q(collection_duration__gte=MIN_MONTHS, collection_duration__lte=MAX_MONTHS),
                name=f"collection_duration_{MIN_MONTHS}_to_{MAX_MONTHS}",
            ),
            models.CheckConstraint(condition=Q(status__in=Status.values), name="status_known"),
            models.CheckConstraint(
                condition=Q(hold__isnull=True) | Q(status=Status.SUBMITTED), name="held_submitted"
            ),
            models.UniqueConstraint(
                fields=["requested_by", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="one_request_per_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=Q(status="submitted"), name="due_submitted"
            ),
            # The dashboard counts from indexes alone (index-only scans): requests by status
            # and outcome, created / finished per bucket, failures by error.
            models.Index(
                fields=["status", "-created"], include=["collection_outcome"], name="status_created"
            ),
            models.Index(fields=["-created"], name="created_desc"),
            models.Index(fields=["status", "updated"], name="status_updated"),
            models.Index(
                fields=["error", "updated"], condition=Q(status="failed"), name="failed_error"
            ),
            # Spend per day and month, and the budget's sum, from the index alone.
            models.Index(
                fields=["admitted_at"],
                include=["estimated_cost", "expected_cost", "status"],
                name="admitted",
            ),
            models.Index(fields=["created"], condition=Q(hold__isnull=False), name="held"),
            # The dashboard's collections finished today, by outcome.
            models.Index(
                fields=["collection_outcome", "collection_finished_at"],
                condition=Q(collection_outcome__isnull=False),
                name="collection_finished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status}, {len(self.meters or [])} meters)"


class Attempt(models.Model):
    """One request's part in one HTTP POST; rows sharing call_id went out in the same POST."""

    request = models.ForeignKey(
        CollectionRequest, on_delete=models.CASCADE, related_name="http_attempts"
    )
    call_id = models.UUIDField(db_index=True)
    requests_in_call = models.PositiveIntegerField(
        default=1, help_text="Requests carried by the POST."
    )
    started = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Empty when no HTTP answer came (timeout, network)."
    )
    retry_after_seconds = models.FloatField(null=True, blank=True)
    error = models.CharField(max_length=64, blank=True)
    error_description = models.TextField(blank=True)
    task_id = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["started", "id"]
        indexes = [
            models.Index(fields=["started"], name="attempt_started"),
            models.Index(fields=["request", "started"], name="attempt_request_started"),
        ]

    def __str__(self) -> str:
        return f"{self.started:%Y-%m-%d %H:%M:%S} → {self.status_code or self.error}"


class DailySpend(models.Model):
    """The estimated dollars let through per UTC day: what the budgets read instead of summing
    the month's requests (services/budget.py). Written only by the database: triggers on
    CollectionRequest add a request's estimate to its admitted_at's day while it counts
    (admitted, not failed) and take it off when it stops counting, in the same transaction.
    A day's total is spread over 16 rows (the triggers pick one at random, migration 0009), so
    that concurrent INSERTs do not queue on one row; their sum is the day's spend."""

    day = models.DateField()
    shard = models.PositiveSmallIntegerField()
    dollars = models.DecimalField(max_digits=MONEY_DIGITS + 2, decimal_places=MONEY_PLACES)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "shard"], name="one_spend_row_per_shard")
        ]

    def __str__(self) -> str:
        return f"{self.day} #{self.shard}: ${self.dollars}"


class ApiToken(models.Model):
    """A bearer token for the JSON API. Only a SHA-256 digest is stored; the token itself is
    shown once, when created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="The token's first characters, to tell it.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class Meter(models.Model):
    """A meter as UtilityAPI's GET /meters last described it (synced, never edited here)."""

    uid = models.CharField(max_length=UID_MAX_LENGTH, unique=True)
    authorization_uid = models.CharField(max_length=64, blank=True, db_index=True)
    utility = models.CharField(max_length=100, blank=True)
    vendor_status = models.CharField(max_length=32, blank=True)
    status_message = models.TextField(blank=True)
    is_activated = models.BooleanField(default=False)
    is_archived = models.BooleanField(default=False)
    # Copied from the meter's Authorization row (services/authorizations.py).
    authorization_revoked = models.BooleanField(default=False)
    authorization_expired = models.BooleanField(default=False)
    raw = models.JSONField(default=dict, blank=True, help_text="The vendor's object, as synced.")
    synced_at = models.DateTimeField()
    # The newest request naming this meter: kept by a database trigger on each INSERT of a
    # request (migration 0005), so storing a request stays one statement.
    last_request = models.ForeignKey(
        CollectionRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["uid"]

    def __str__(self) -> str:
        return self.uid


# A meter the bulk trigger collects: its authorization live, the meter not archived. The two
# authorization flags are copied from the meter's Authorization row (AUTHORIZATION_REVOKED,
# AUTHORIZATION_EXPIRED) by services/authorizations.py.
COLLECTABLE = Q(authorization_revoked=False, authorization_expired=False, is_archived=False)


class Authorization(models.Model):
    """A customer's authorization as UtilityAPI's GET /authorizations last described it, or
    as an authorization_* event changed it since (services/authorizations.py). Meters name
    theirs by `authorization_uid`; revocation and expiry are the authorization's, not the
    meter's."""

    uid = models.CharField(max_length=UID_MAX_LENGTH, unique=True)
    status = models.CharField(max_length=32, blank=True)
    revoked = models.DateTimeField(null=True, blank=True, help_text="The earliest revocation.")
    is_revoked = models.BooleanField(default=False)
    expires = models.DateTimeField(
        null=True, blank=True, help_text="Empty when the vendor gave no time (a preset string)."
    )
    is_expired = models.BooleanField(default=False)
    is_declined = models.BooleanField(default=False)
    is_test = models.BooleanField(default=False)
    raw = models.JSONField(default=dict, blank=True, help_text="The vendor's object, as synced.")
    synced_at = models.DateTimeField(
        null=True, blank=True, help_text="Empty: known only from an event so far."
    )
    event_ts = models.DateTimeField(
        null=True, blank=True, help_text="The time of the latest event applied to it."
    )

    class Meta:
        ordering = ["uid"]
        indexes = [
            models.Index(fields=["expires"], condition=Q(is_expired=False), name="auth_expires")
        ]

    def __str__(self) -> str:
        return self.uid


# The one rule for an authorization that stops its meters from being collected: revoked (the
# flag, or a revocation time), or expired (the flag, or an expiry time that has passed, even
# when the vendor's is_expired was still false when it was read).
AUTHORIZATION_REVOKED = Q(is_revoked=True) | Q(revoked__isnull=False)
AUTHORIZATION_EXPIRED = Q(is_expired=True) | Q(expires__lte=Now())


# --- collection tracking (services/tracking.py) -----------------------------------------------


class MeterResult(models.TextChoices):
    """Where one accepted meter's collection stands, derived from its stage and status."""

    COLLECTING = "", "Collecting"
    SUCCESSFUL = "successful", "Successful"
    ERRORED = "errored", "Errored"


class MeterProgress(models.Model):
    """One accepted meter of one request: the vendor's progress on collecting it.

    `stage` is the suffix of the latest meter_historical_collection_* event (by the event's
    own time, `stage_ts`); `status` and the counts come from GET /meters. Unknown values are
    kept as they come."""

    request = models.ForeignKey(
        CollectionRequest, on_delete=models.CASCADE, related_name="meter_progress"
    )
    meter = models.CharField(max_length=64)
    accepted_at = models.DateTimeField(help_text="When UtilityAPI accepted the request.")
    stage = models.CharField(max_length=64, blank=True)
    stage_ts = models.DateTimeField(null=True, blank=True, help_text="The stage event's time.")
    stage_changed = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=32, blank=True)
    status_message = models.TextField(blank=True)
    status_ts = models.DateTimeField(null=True, blank=True)
    status_changed = models.DateTimeField(null=True, blank=True)
    bill_count = models.PositiveIntegerField(null=True, blank=True)
    interval_count = models.PositiveIntegerField(null=True, blank=True)
    result = models.CharField(max_length=16, choices=MeterResult, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    polled_at = models.DateTimeField(null=True, blank=True, help_text="Last GET /meters read.")
    changed = models.DateTimeField(help_text="When anything above last changed.")

    class Meta:
        ordering = ["request", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "meter"], name="one_progress_per_meter"),
        ]
        indexes = [
            models.Index(fields=["meter"], condition=Q(result=""), name="progress_collecting"),
            models.Index(fields=["accepted_at"], condition=Q(result=""), name="progress_oldest"),
        ]

    def __str__(self) -> str:
        return f"{self.meter}: {self.stage or '-'} / {self.status or '-'}"


class EventSource(models.TextChoices):
    WEBHOOK = "webhook", "Webhook"
    POLL = "poll", "GET /events"


class Event(models.Model):
    """One UtilityAPI event, stored once by its uid however often it arrives."""

    uid = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    ts = models.DateTimeField(null=True, blank=True, help_text="The event's own time.")
    meter_uid = models.CharField(max_length=64, blank=True)
    authorization_uid = models.CharField(max_length=64, blank=True)
    raw = models.JSONField(help_text="The vendor's object, as received.")
    via = models.CharField(max_length=16, choices=EventSource)
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(
        null=True, blank=True, help_text="Marked delivered with PATCH /events/{uid}."
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(
                fields=["received_at"], condition=Q(processed_at=None), name="unprocessed"
            ),
            models.Index(fields=["meter_uid", "received_at"], name="event_meter_received"),
        ]

    def __str__(self) -> str:
        return f"{self.uid} ({self.type})"


class VendorCall(models.Model):
    """One tracking call to UtilityAPI (GET /events, GET /meters, PATCH /events/{uid})."""

    method = models.CharField(max_length=8)
    endpoint = models.CharField(max_length=64, help_text="The path, ids left out.")
    started = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Empty when no HTTP answer came (timeout, network)."
    )
    items = models.PositiveIntegerField(default=0, help_text="Events or meters it carried.")
    error = models.CharField(max_length=64, blank=True)
    error_description = models.TextField(blank=True)

    class Meta:
        ordering = ["-started", "-id"]
        indexes = [models.Index(fields=["started"], name="vendor_call_started")]

    def __str__(self) -> str:
        return f"{self.method} {self.endpoint} → {self.status_code or self.error}"


# --- callbacks to the caller (services/callbacks.py) ------------------------------------------


class Moment(models.TextChoices):
    """What a callback tells: the request reached a status, or its collection's outcome."""

    PENDING = "pending", "Reached pending"
    FAILED = "failed", "Reached failed"
    COLLECTION_OUTCOME = "collection_outcome", "Collection outcome"


class CallbackDelivery(models.Model):
    """One attempt to POST one moment of a request to its callback_url (a row in the outbox).

    The first attempt is stored in the transaction that reached the moment; each failed
    attempt stores the next one (same `event_id`, `attempt` + 1) until a 2xx or
    COLLECTIONS_CALLBACK_GIVE_UP_SECONDS after the moment."""

    request = models.ForeignKey(
        CollectionRequest, on_delete=models.CASCADE, related_name="callback_deliveries"
    )
    event_id = models.UUIDField(
        default=uuid.uuid4, help_text="The same for every attempt of one moment."
    )
    moment = models.CharField(max_length=32, choices=Moment)
    moment_at = models.DateTimeField(help_text="When the request reached the moment.")
    attempt = models.PositiveSmallIntegerField(default=1)
    created = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(
        null=True, blank=True, help_text="When it is due; empty once tried."
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    tried_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Empty when no HTTP answer came."
    )
    error = models.CharField(max_length=64, blank=True)
    error_description = models.TextField(blank=True)
    body_sha256 = models.CharField(max_length=64, blank=True, help_text="Of the body sent.")
    delivered_at = models.DateTimeField(null=True, blank=True)
    gave_up = models.BooleanField(default=False, help_text="The last attempt: no more retries.")

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name_plural = "callback deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"], condition=Q(tried_at=None), name="callback_due"
            ),
            models.Index(fields=["request", "created"], name="callback_request_created"),
        ]

    def __str__(self) -> str:
        return f"{self.moment} #{self.attempt} → {self.status_code or self.error or 'due'}"
