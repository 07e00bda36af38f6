"""A large, plausible dataset for the dashboard's benchmark and screenshots.

`build(100_000, 3)` stores 100,000 collection requests and about 300,000 attempts spread over
the last `days` days with a daily rhythm: those of the last ten minutes still submitted (due,
waiting for a retry, or claimed by a worker), the others 90 % pending and 10 % failed (five
error types). On PostgreSQL the rows go in by COPY (about ten seconds for 400,000 rows);
elsewhere by bulk_create, and then VACUUM (ANALYZE) leaves the tables as autovacuum soon
would. Write only to a throwaway database.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from collections_app.models import Attempt, CollectionRequest, Source, Status
from collections_app.services.budget import estimated_cost
from collections_app.services.leases import lease_seconds

# error type, HTTP status, the vendor's (or the service's) description
FAILURES = [
    ("retries_exhausted", 503, "Gave up after 8 attempts; the last: http_503: maintenance"),
    ("not_found", 404, "None of the Meters exist."),
    ("invalid_param", 400, "Values in the meters list are invalid."),
    ("http_500", 500, "<html><body>Internal Server Error</body></html>"),
    ("expired_or_revoked", 400, "All of the Authorizations for these meters are expired."),
]
REQUEST_COLUMNS = [
    "id",
    "status",
    "meters",
    "collection_duration",
    "accepted_meters",
    "ignored_meters",
    "attempts",
    "next_attempt_at",
    "error",
    "error_description",
    "last_http_status",
    "source",
    "idempotency_key",
    "lease_expires_at",
    "task_id",
    "created",
    "updated",
    "estimated_cost",
    "admitted_at",
]
ATTEMPT_COLUMNS = [
    "request_id",
    "call_id",
    "requests_in_call",
    "started",
    "duration_ms",
    "status_code",
    "retry_after_seconds",
    "error",
    "error_description",
    "task_id",
]
CHUNK = 10_000
ESTIMATE = estimated_cost(1, None)  # one meter, the account's default duration
RECENT = timedelta(minutes=10)  # requests this young are still submitted


def build(
    requests: int = 100_000,
    attempts_per_request: int = 3,
    days: float = 7.0,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Store the dataset; returns (requests, attempts) stored."""
    now = now or timezone.now()
    stored = [0, 0]
    with transaction.atomic():
        for start in range(0, requests, CHUNK):
            chunk = range(start, min(start + CHUNK, requests))
            rows = [_request(i, requests, days, attempts_per_request, now) for i in chunk]
            attempts = [a for row in rows for a in _attempts(row, now)]
            _store(CollectionRequest, REQUEST_COLUMNS, rows)
            _store(Attempt, ATTEMPT_COLUMNS, attempts)
            stored[0] += len(rows)
            stored[1] += len(attempts)
    settle()
    return stored[0], stored[1]


def settle() -> None:
    """What autovacuum does soon after a bulk load, done now (PostgreSQL; outside a transaction):
    VACUUM sets the visibility map the dashboard's index-only scans read, ANALYZE gives the
    planner the table's real size. Without it, queries run right after a load are planned for a
    far smaller table: sequential scans where an index serves."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return
    with connection.cursor() as cursor:
        for model in (CollectionRequest, Attempt):
            cursor.execute(f"VACUUM (ANALYZE) {model._meta.db_table}")


def _created(i: int, n: int, days: float, now: datetime) -> datetime:
    """Request i's creation time: spread over `days`, busier by day than by night."""
    p = (i + 0.5) / n
    wave = 0.6 / (2 * math.pi * days) * math.sin(2 * math.pi * days * p)
    return now - timedelta(days=days) * (p - wave)


def _request(i: int, n: int, days: float, per_request: int, now: datetime) -> dict[str, Any]:
    """Request i of n (0 the newest): submitted if recent, else failed one in ten; from 1 to
    2 × per_request - 1 attempts."""
    created, kind = _created(i, n, days, now), i % 20
    tries = 1 + (i // 7) % 5 * (2 * per_request - 1) // 5
    row = {
        "id": uuid.uuid4(),
        "status": Status.PENDING,
        "meters": [f"sample-{i}"],
        "collection_duration": None,
        "accepted_meters": [f"sample-{i}"],
        "ignored_meters": [],
        "attempts": tries,
        "next_attempt_at": None,
        "error": "",
        "error_description": "",
        "last_http_status": 200,
        "source": Source.CLI,
        "idempotency_key": "",
        "lease_expires_at": None,
        "task_id": "",
        "created": created,
        "updated": min(created + timedelta(seconds=7 * tries), now),
        "estimated_cost": ESTIMATE,
        "admitted_at": created,
        "_429": i % 13 == 0,  # one request in 13 met a 429 on its way
    }
    if created > now - RECENT:
        row.update(_waiting(i, created, now), status=Status.SUBMITTED, accepted_meters=[])
    elif kind < 2:
        error, code, description = FAILURES[(i // 20) % len(FAILURES)]
        row.update(
            status=Status.FAILED,
            accepted_meters=[],
            error=error,
            last_http_status=code,
            error_description=description,
        )
    return row


def _waiting(i: int, created: datetime, now: datetime) -> dict[str, Any]:
    """A recent request still submitted: due, or waiting for a retry; one in ten claimed by a
    worker just now."""
    return {
        "next_attempt_at": created + timedelta(seconds=45 * (i % 10)),
        "error": "http_503",
        "error_description": "Service Unavailable",
        "last_http_status": 503,
        "lease_expires_at": now + timedelta(seconds=lease_seconds() - 3) if i % 10 == 0 else None,
    }


def _attempts(row: dict[str, Any], now: datetime) -> Iterator[dict[str, Any]]:
    """The row's attempts: 503s (a 429 for a few), then its final answer."""
    count = row["attempts"]
    for g in range(1, count + 1):
        final = g == count
        code = row["last_http_status"] if final else (429 if g == 2 and row["_429"] else 503)
        yield {
            "request_id": row["id"],
            "call_id": uuid.uuid4(),
            "requests_in_call": 1,
            "started": min(row["created"] + timedelta(seconds=7 * g), now),
            "duration_ms": 120 + 13 * g,
            "status_code": code,
            "retry_after_seconds": 2.0 if code == 429 else None,
            "error": row["error"] if final else f"http_{code}",
            "error_description": row["error_description"] if final else "",
            "task_id": "",
        }


def _store(model: Any, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    if connection.vendor == "postgresql":
        return _copy(model._meta.db_table, columns, rows)
    objects = [model(**{column: row[column] for column in columns}) for row in rows]
    model.objects.bulk_create(objects, batch_size=500)


def _copy(table: str, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY in its text format, written in one piece (much faster than row by row)."""
    lines = ("\t".join(_copy_text(row[c]) for c in columns) + "\n" for row in rows)
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        copy.write("".join(lines))


COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    """One value in COPY's text format: \\N for NULL, JSON for lists, escaped text."""
    if value is None:
        return "\\N"
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text.translate(COPY_ESCAPES)
