"""The sweep's heartbeat: when the periodic sweep last ran, kept in Redis for the dashboard.

The sweep runs only when beat schedules it and a worker executes it, so its last run time
says that both are alive (django_celery_beat's PeriodicTask.last_run_at is written back only
every few minutes, too late for a 30-second schedule).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .. import gate

log = logging.getLogger(__name__)

SWEEP_KEY = "collections:ops:sweep_last_run"


def record_sweep(result: dict[str, int]) -> None:
    """Note that the sweep ran now; never lets a Redis error fail the sweep itself."""
    value = json.dumps({"at": time.time(), **result})
    try:
        gate.connection().set(SWEEP_KEY, value, ex=86_400)
    except Exception as err:  # redis errors vary; the heartbeat is only for the dashboard
        log.warning("cannot record the sweep's heartbeat: %s", type(err).__name__)


def parse(raw: bytes | None) -> dict[str, Any] | None:
    """The recorded heartbeat ({"at": epoch seconds, ...counts}), or None if never recorded."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return {**data, "at": float(data["at"])}
    except (ValueError, KeyError, TypeError):
        return None
