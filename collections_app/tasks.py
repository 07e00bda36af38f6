"""Thin tasks: take an id, call a service.

UtilityAPI's answers are never retried through Celery: the policy in services/outcomes.py
stores the next attempt on the row. Celery retries only the infrastructure failing under the
task (the database restarting), with a short backoff.
"""

from celery import shared_task
from celery.exceptions import Ignore
from django.db import InterfaceError, OperationalError

from . import callback_delivery, delivery, polling, services, sync_jobs
from .services import registry, tracking

INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, ConnectionError)


@shared_task(
    bind=True,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=20,
)
def deliver(self, request_id: str | None = None) -> str:
    """Send due collection requests (`request_id` first, if given). A delivery that finds
    nothing due is not an event anyone needs: it leaves no task-result row."""
    done = delivery.deliver_due(self.request.id or "", first=request_id)
    if not done:
        raise Ignore()
    return done


@shared_task(autoretry_for=INFRASTRUCTURE_ERRORS, retry_backoff=1, max_retries=10)
def deliver_callbacks() -> int:
    """Send due callbacks: queued when one is stored, when a retry falls due soon, and
    periodically by beat. Returns how many were sent; a run with none leaves no result row."""
    sent = callback_delivery.deliver_due()
    if not sent:
        raise Ignore()
    return sent


@shared_task(autoretry_for=INFRASTRUCTURE_ERRORS, retry_backoff=1, max_retries=3)
def sweep() -> dict[str, int]:
    """Periodic (beat): free rows of dead workers and re-dispatch forgotten due rows."""
    return services.sweep()


# A sync reads every page of GET /meters (1000 meters a page), longer than the default limit.
@shared_task(
    bind=True,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=5,
    max_retries=3,
    soft_time_limit=1800,
    time_limit=1860,
)
def sync_meters(self) -> dict[str, int]:
    """Periodic (beat), at start on an empty registry, and from the admin: refresh the meter
    registry from UtilityAPI; reports its counts after each page (state PROGRESS) and returns
    them. UtilityAPI's errors are not retried here: the next scheduled run tries again."""
    task_id = self.request.id

    def report(result: registry.SyncResult) -> None:
        if task_id:
            self.update_state(state="PROGRESS", meta=result.as_dict())

    try:
        return registry.sync_meters(on_page=report).as_dict()
    finally:
        if task_id:
            sync_jobs.finished(task_id)


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
