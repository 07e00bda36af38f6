"""Liveness of the worker and of beat, independent of the broker: each touches a heartbeat
file (the worker every HEARTBEAT_INTERVAL_SECONDS from a thread of its own, beat on every tick
of its scheduler), and `manage.py alive worker|beat` fails when the file is missing or older
than --max-age. A process that is frozen (SIGSTOP, a paused VM) or gone stops touching its
file, whether or not the broker answers; a broker outage alone does not make a worker "dead"
and get it restarted for nothing.

The worker also records its heartbeat in Redis (hostname → time), for /metrics' per-worker
heartbeat age and the "worker heartbeat missing" alert.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, cast

from celery import bootsteps
from django.conf import settings

from . import redis_state

log = logging.getLogger(__name__)
WORKERS_KEY = "collections:ops:worker_heartbeats"
FORGET_AFTER_SECONDS = 86_400  # a worker silent this long drops out of /metrics


def touch(path: str) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.touch()


def age(path: str) -> float | None:
    """Seconds since the file was touched; None when it does not exist."""
    try:
        return max(time.time() - Path(path).stat().st_mtime, 0.0)
    except FileNotFoundError:
        return None


def worker_heartbeats() -> dict[str, float]:
    """Each worker's last heartbeat (epoch seconds) as recorded in Redis."""
    raw = cast(dict[bytes, bytes], redis_state.quick_connection().hgetall(WORKERS_KEY))
    now, beats = time.time(), {}
    for name, at in raw.items():
        if now - float(at) < FORGET_AFTER_SECONDS:
            beats[name.decode()] = float(at)
    return beats


class WorkerHeartbeat(bootsteps.StartStopStep):
    """A worker bootstep: a thread of its own touches WORKER_HEARTBEAT_FILE (and notes the
    time in Redis) every HEARTBEAT_INTERVAL_SECONDS. Not the worker's timer: on RabbitMQ that
    runs in the consumer's event loop, which stalls while the broker is away."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        self.hostname = worker.hostname
        self.beat()
        self.thread = threading.Thread(target=self.run, name="heartbeat", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.wait(settings.HEARTBEAT_INTERVAL_SECONDS):
            self.beat()

    def stop(self, worker: Any) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        Path(settings.WORKER_HEARTBEAT_FILE).unlink(missing_ok=True)
        self._redis("hdel", WORKERS_KEY, self.hostname)

    def beat(self) -> None:
        touch(settings.WORKER_HEARTBEAT_FILE)
        self._redis("hset", WORKERS_KEY, self.hostname, f"{time.time():.3f}")

    def _redis(self, command: str, *args: str) -> None:
        try:
            getattr(redis_state.quick_connection(), command)(*args)
        except Exception as err:  # only /metrics reads it; the file is the liveness signal
            log.debug("cannot record the worker heartbeat in Redis: %s", type(err).__name__)
