"""The Celery app: `celery -A project worker` and `celery -A project beat`.

Configuration lives in Django settings under the CELERY_ namespace
(https://docs.celeryq.dev/en/stable/django/first-steps-with-django.html).
"""

import os
from typing import Any

from celery import Celery, bootsteps
from celery.signals import beat_init, task_postrun, task_prerun

from collections_app.liveness import WorkerHeartbeat

from . import logs

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.steps["worker"].add(WorkerHeartbeat)


@task_prerun.connect
def bind_task_to_logs(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    """Every line a task logs carries its id and name (LOG_FORMAT=json); nothing is left
    over from the thread's previous task."""
    logs.clear()
    logs.bind(task_id=task_id, task=getattr(task, "name", ""))


@task_prerun.connect
@task_postrun.connect
def reuse_db_connections(sender: Any = None, **kwargs: Any) -> None:
    """Between tasks, treat a worker thread's database connection as Django treats a web
    thread's between requests: keep it unless broken or older than CONN_MAX_AGE, and health
    check it before reuse. (Celery's Django fixup would open a new PostgreSQL connection for
    every task; CELERY_DB_REUSE_MAX in settings leaves the job to this.)"""
    if sender is None or getattr(sender.request, "is_eager", False):
        return  # an eager task runs inside its caller's connection and transaction
    from django.db import close_old_connections

    close_old_connections()


@beat_init.connect
def sync_an_empty_registry(sender: Any = None, **kwargs: Any) -> None:
    """One beat runs per fleet: when it starts on an empty meter registry, it queues one sync
    at once instead of waiting for the schedule's first interval."""
    from collections_app.sync_jobs import queue_sync_if_empty

    queue_sync_if_empty()


class DueWorkRelay(bootsteps.StartStopStep):
    """Every worker runs a relay thread that announces due work on the broker
    (collections_app.relay)."""

    requires = {"celery.worker.components:Pool"}

    def start(self, worker: Any) -> None:
        from collections_app.relay import Relay

        self.relay = Relay()
        self.relay.start()

    def stop(self, worker: Any) -> None:
        self.relay.stop()


app.steps["worker"].add(DueWorkRelay)
