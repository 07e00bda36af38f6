"""The sandbox's background thread: it moves collections on and sends the webhook posts, so
no vendor call ever waits for either."""

from __future__ import annotations

import logging
import threading
import time

import requests

from . import loop, webhooks
from .state import SandboxState

log = logging.getLogger(__name__)
TICK = 0.1  # seconds between looks when nothing woke the thread


class Clock:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="sandbox-clock", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.state.wakeup.set()
        self.thread.join(timeout=10)

    def run(self) -> None:
        http = requests.Session()
        while not self.stopping.is_set():
            self.state.wakeup.clear()
            try:
                self.tick(http, time.time())
            except Exception:  # a bug must not stop the clock
                log.exception("sandbox clock tick failed")
            self.state.wakeup.wait(TICK)

    def tick(self, http: requests.Session, now: float) -> None:
        with self.state.lock:
            loop.advance(self.state, now)
        webhooks.deliver(self.state, http, now)
