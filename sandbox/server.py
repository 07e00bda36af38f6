"""Serving the sandbox's WSGI application: a threaded wsgiref server in a thread of the caller
(the tests' fixture), or gunicorn with one threaded worker (the management command). Either
runs the background clock (sandbox.clock) beside the application."""

from __future__ import annotations

import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from gunicorn.app.base import BaseApplication

from .app import SandboxApp
from .clock import Clock
from .state import SandboxState


class _Handler(WSGIRequestHandler):
    disable_nagle_algorithm = True
    server: SandboxServer

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ["sandbox.socket"] = self.connection  # for the scripted connection reset
        return environ

    def log_message(self, format: str, *args: Any) -> None:  # quiet unless verbose
        if self.server.verbose:
            super().log_message(format, *args)


class SandboxServer(ThreadingMixIn, WSGIServer):
    """The sandbox on a loopback port (0: any free one), served from threads of this process."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, state: SandboxState, host: str = "127.0.0.1", port: int = 0, verbose: bool = False
    ):
        self.state, self.verbose = state, verbose
        super().__init__((host, port), _Handler)
        self.set_app(SandboxApp(state))
        self.clock = Clock(state)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that hung up (timed out, or killed by a fault test) is no server error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/api/v2"

    def start_in_thread(self) -> threading.Thread:
        self.clock.start()
        thread = threading.Thread(target=self.serve_forever, name="utilityapi-sandbox", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        super().shutdown()
        self.clock.stop()


class GunicornSandbox(BaseApplication):  # type: ignore[misc]
    """The sandbox under gunicorn: one gthread worker (the state lives in its memory)."""

    def __init__(self, state: SandboxState, host: str, port: int, verbose: bool) -> None:
        self.state = state
        self.options = {
            "bind": f"{host}:{port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": 64,
            "keepalive": 5,
            "graceful_timeout": 3,
            "limit_request_line": 0,  # GET /meters?uids= with 1000 uids is a long line
            "accesslog": "-" if verbose else None,
            "loglevel": "info" if verbose else "warning",
            "proc_name": "utilityapi-sandbox",
            "post_worker_init": self.start_clock,
        }
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> SandboxApp:
        return SandboxApp(self.state)

    def start_clock(self, worker: Any) -> None:
        """In the worker process, where the application serves (threads do not survive fork)."""
        Clock(self.state).start()
