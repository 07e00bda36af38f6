"""Beat's scheduler: django_celery_beat's DatabaseScheduler, touching BEAT_HEARTBEAT_FILE on
every tick (at least every few seconds), so `manage.py alive beat` sees a stuck beat."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler

from .liveness import touch


class HeartbeatScheduler(DatabaseScheduler):
    def tick(self, *args: Any, **kwargs: Any) -> float:
        touch(settings.BEAT_HEARTBEAT_FILE)
        return super().tick(*args, **kwargs)
