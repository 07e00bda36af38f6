"""Thin tasks: take an id, call a service.

UtilityAPI's answers are never retried through Celery: the policy in services/outcomes.py
stores the next attempt on the row. Celery retries only the infrastructure failing under the
task (the database restarting), with a short backoff.
"""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import delivery, meters, polling, services
from .services import tracking

INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, ConnectionError)


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=20,
)
def send_collection(self, request_id: str) -> str:
    """Send collection request `request_id` if it is due (a duplicate delivery is harmless)."""
    return delivery.deliver(request_id, task_id=self.request.id or "")


@shared_task(autoretry_for=INFRASTRUCTURE_ERRORS, retry_backoff=1, max_retries=3)
def sweep() -> dict[str, int]:
    """Periodic (beat): free rows of dead workers and re-dispatch forgotten due rows."""
    return services.sweep()


# A sync reads every page of GET /meters (1000 meters a page), longer than the default limit.
@shared_task(
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=5,
    max_retries=3,
    soft_time_limit=1800,
    time_limit=1860,
)
def sync_meters() -> dict[str, int]:
    """Periodic (beat): refresh the meter registry from UtilityAPI; returns the counts.
    UtilityAPI's errors are not retried here: the next scheduled run tries again."""
    return meters.sync_meters().as_dict()


@shared_task(autoretry_for=INFRASTRUCTURE_ERRORS, retry_backoff=1, max_retries=10)
def process_events(event_ids: list[int]) -> int:
    """Apply stored events to the meters' progress (queued by the webhook after it stored them)."""
    return tracking.process_events(event_ids)


@shared_task(
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=5,
    max_retries=3,
    soft_time_limit=1800,
    time_limit=1860,
)
def poll_progress() -> dict[str, int]:
    """Periodic (beat): read undelivered events and long-unfinished meters from UtilityAPI."""
    return polling.poll()
