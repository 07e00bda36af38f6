"""The worker's relay: a thread that tells the fleet about due work. It sleeps until a
request is stored or falls due (PostgreSQL LISTEN/NOTIFY, woken by a trigger on the table;
on other databases it polls), waits the coalescing window so that requests stored together
share a POST, and announces the due rows on the broker (services.broker.announce_due)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from .services import broker

log = logging.getLogger(__name__)
CHANNEL = "collections_due"  # the trigger's NOTIFY channel (migration 0003)
POLL_SECONDS = 2.0  # the longest sleep between rounds while LISTEN works
POLL_SECONDS_WITHOUT_LISTEN = 0.25
ERROR_PAUSE_SECONDS = 1.0


class Relay(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="collections-relay", daemon=True)
        self.stopping = threading.Event()
        self._listener: Any = None

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            wait = self._round()
            if self._sleep(wait) and not self.stopping.is_set():
                time.sleep(settings.COLLECTIONS_COALESCE_WINDOW_MS / 1000)
        self._close_listener()

    def _round(self) -> float:
        """One announcement; returns how long to sleep before the next."""
        longest = POLL_SECONDS if self._listen() else POLL_SECONDS_WITHOUT_LISTEN
        try:
            close_old_connections()
            _, next_due = broker.announce_due()
        except Exception:
            log.exception("relay: announcing due work failed; trying again shortly")
            return ERROR_PAUSE_SECONDS
        return longest if next_due is None else min(max(next_due, 0.0), longest)

    def _sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when woken by a notification (new or due work)."""
        if self._listener is None:
            self.stopping.wait(seconds)
            return False
        try:
            woken = any(True for _ in self._listener.notifies(timeout=seconds, stop_after=1))
            if woken:
                list(self._listener.notifies(timeout=0))  # the rest of the burst
            return woken
        except Exception as err:  # the listening connection broke: poll until it is back
            log.warning("relay: LISTEN connection lost (%s)", type(err).__name__)
            self._close_listener()
            return False

    def _listen(self) -> bool:
        """A connection LISTENing on CHANNEL (PostgreSQL only), opened when missing."""
        if self._listener is not None or connection.vendor != "postgresql":
            return self._listener is not None
        import psycopg

        try:
            params = connection.get_connection_params()
            params.pop("cursor_factory", None)
            params.pop("context", None)
            self._listener = psycopg.connect(**params, autocommit=True)
            self._listener.execute(f"LISTEN {CHANNEL}")
        except Exception as err:
            log.warning("relay: cannot LISTEN (%s); polling", type(err).__name__)
            self._close_listener()
        return self._listener is not None

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):  # it is being dropped anyway
                self._listener.close()
            self._listener = None
