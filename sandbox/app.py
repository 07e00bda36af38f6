"""The sandbox as a WSGI application: routing, the Bearer check, latency, the rate limit (429
with Retry-After), scripted answers and faults, and the control endpoints under /_sandbox/.

Every vendor call waits `latency_ms`, then answers 401 without the token, then the next
scripted answer for its route if there is one, then 429 past `rate` calls a second, then the
vendor's answer (sandbox.vendor). A scripted answer is {"route"?, "status"?, "body"?,
"headers"?, "hang"?, "reset"?}: "hang" waits that many seconds first, "reset" kills the
connection (TCP RST) instead of answering, and with no body a 200 answers as the vendor would.
The historical-collection POSTs are logged in `calls` (GET /_sandbox/stats shows them).

Control: POST /_sandbox/reset, /_sandbox/script {"responses": [...]}, /_sandbox/config {knob:
value}, /_sandbox/revoke {"authorizations": [...]}; GET /_sandbox/config and /_sandbox/stats.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from collections_app.client import parse_retry_after

from . import loop, vendor
from .state import DEFAULT_ROUTE, KNOBS, SandboxState
from .vendor import Answer, Request, error

SOCKET_KEYS = ("gunicorn.socket", "sandbox.socket")  # where the servers put the connection
Handler = Callable[[SandboxState, Request], Answer]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (DEFAULT_ROUTE, re.compile(r"/meters/historical-collection$"), vendor.collect),
    ("GET /meters", re.compile(r"/meters$"), vendor.meters),
    ("GET /meters/{uid}", re.compile(r"/meters/(?P<uid>[^/]+)$"), vendor.meter),
    ("GET /events", re.compile(r"/events$"), vendor.events),
    ("GET /events/{uid}", re.compile(r"/events/(?P<uid>[^/]+)$"), vendor.event),
    ("PATCH /events/{uid}", re.compile(r"/events/(?P<uid>[^/]+)$"), vendor.mark_event),
    ("GET /authorizations", re.compile(r"/authorizations$"), vendor.authorizations),
]
RESET: Answer = (0, {}, None)  # the answer that is no answer: the connection is killed


class SandboxApp:
    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = _request(environ)
        answer = self.control(request) if "/_sandbox/" in request.path else self.vendor(request)
        if answer is RESET:
            _reset(next(environ[k] for k in SOCKET_KEYS if k in environ))
            start_response("500 Reset", [("Content-Length", "0")])
            return [b""]
        return _respond(start_response, *answer)

    # --- the vendor's endpoints -----------------------------------------------------------
    def vendor(self, request: Request) -> Answer:
        state = self.state
        route, handler = self._route(request)
        with state.lock:
            call = self._log(route, request)
            step = state.next_step(route) if handler else None
        time.sleep(state.latency_ms / 1000)
        if request.authorization != f"Bearer {state.token}":
            return _record(call, *error(401, "invalid_token", "Invalid or missing access_token."))
        if handler is None:
            return vendor.NOT_FOUND
        if step is not None:
            return self.scripted(call, step, request, handler)
        with state.lock:
            retry_after = state.admit(time.time())
            if retry_after is None:
                return _record(call, *handler(state, request))
            state.blocked_until = max(state.blocked_until, time.time() + retry_after)
        return _record(call, 429, {"Retry-After": str(math.ceil(retry_after))}, "")

    def _route(self, request: Request) -> tuple[str, Handler | None]:
        for name, pattern, handler in ROUTES:
            match = pattern.search(request.path)
            if match and name.split(" ")[0] == request.method:
                request.uid = match.groupdict().get("uid") or ""
                return name, handler
        return f"{request.method} {request.path}", None

    def _log(self, route: str, request: Request) -> dict[str, Any]:
        """A historical-collection POST joins `calls`; other calls are counted by route."""
        state, arrived = self.state, time.time()
        call: dict[str, Any] = {
            "at": arrived,
            "meters": None,
            "early": arrived < state.blocked_until,
        }
        if route != DEFAULT_ROUTE:
            state.reads[route] = state.reads.get(route, 0) + 1
            return call
        body = request.json()
        if isinstance(body, dict) and isinstance(body.get("meters"), list):
            call["meters"] = body["meters"]
            call["collection_duration"] = body.get("collection_duration")
        state.calls.append(call)
        return call

    def scripted(
        self, call: dict[str, Any], step: dict[str, Any], request: Request, handler: Handler
    ) -> Answer:
        """Answer as a test scripted it."""
        if step.get("hang"):
            time.sleep(float(step["hang"]))
        if step.get("reset"):
            call["status"] = "reset"
            return RESET
        headers = {k: str(v) for k, v in (step.get("headers") or {}).items()}
        status = int(step.get("status", 200))
        if status == 429 and "Retry-After" in headers:
            with self.state.lock:
                until = time.time() + parse_retry_after(headers["Retry-After"])
                self.state.blocked_until = max(self.state.blocked_until, until)
        body = step.get("body")
        if body is None and status == 200:
            with self.state.lock:
                real_status, real_headers, body = handler(self.state, request)
            status, headers = real_status, {**real_headers, **headers}
        return _record(call, status, headers, body if body is not None else "")

    # --- control --------------------------------------------------------------------------
    def control(self, request: Request) -> Answer:
        state, action = self.state, request.path.rsplit("/", 1)[-1]
        if request.method == "GET" and action in ("stats", "config"):
            return 200, {}, self.stats() if action == "stats" else _knobs(state)
        data = request.json() if request.body else {}
        if request.method != "POST" or not isinstance(data, dict):
            return 400, {}, {"error": "POST a JSON object to /_sandbox/<action>"}
        if action == "reset":
            state.reset()
        elif action == "script":
            responses = data.get("responses", [])
            if not isinstance(responses, list) or not all(isinstance(r, dict) for r in responses):
                return 400, {}, {"error": "responses must be a list of objects"}
            with state.lock:
                state.script.extend(responses)
        elif action == "revoke":
            with state.lock:
                loop.revoke(state, [str(a) for a in data.get("authorizations", [])], time.time())
        elif action == "config":
            try:
                state.configure(**data)
            except ValueError as problem:
                return 400, {}, {"error": str(problem)}
        else:
            return 404, {}, {"error": "unknown control action"}
        return 200, {}, {"ok": True}

    def stats(self) -> dict[str, Any]:
        with self.state.lock:
            calls = list(self.state.calls)
            events = list(self.state.events.values())
            webhooks = list(self.state.webhook_log)
            reads, running = dict(self.state.reads), len(self.state.collections)
        by_status: dict[str, int] = {}
        for c in calls:
            by_status[str(c.get("status"))] = by_status.get(str(c.get("status")), 0) + 1
        return {
            "calls": len(calls),
            "by_status": by_status,
            "early_calls": sum(1 for c in calls if c.get("early")),
            "meters_sent": sum(len(c["meters"] or []) for c in calls),
            "log": calls,
            "reads": reads,
            "collections_running": running,
            "events": len(events),
            "events_delivered": sum(1 for e in events if e["is_delivered"]),
            "webhook_posts": webhooks,
        }


def _request(environ: dict[str, Any]) -> Request:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    host = environ.get("HTTP_HOST") or f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}"
    return Request(
        method=environ["REQUEST_METHOD"],
        path=environ.get("PATH_INFO", "").rstrip("/"),
        query=parse_qs(environ.get("QUERY_STRING", "")),
        body=environ["wsgi.input"].read(length) if length else b"",
        origin=f"{environ.get('wsgi.url_scheme', 'http')}://{host}",
        authorization=environ.get("HTTP_AUTHORIZATION", ""),
    )


def _record(call: dict[str, Any], status: int, headers: dict[str, str], body: Any) -> Answer:
    call["status"] = status
    call["answered"] = time.time()
    if "Retry-After" in headers:
        call["retry_after"] = headers["Retry-After"]
    return status, headers, body


def _respond(
    start_response: Callable[..., Any], status: int, headers: dict[str, str], body: Any
) -> list[bytes]:
    is_text = isinstance(body, str | bytes)
    payload = (
        body.encode() if isinstance(body, str) else body if is_text else json.dumps(body).encode()
    )
    content_type = "text/html" if is_text else "application/json"
    merged = {"Content-Type": content_type, **headers, "Content-Length": str(len(payload))}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    start_response(f"{status} {phrase}", list(merged.items()))
    return [payload]


def _reset(connection: socket.socket) -> None:
    """Kill the connection with a TCP RST, leaving the server a harmless descriptor.

    With SO_LINGER 0, closing a socket's last descriptor resets the connection. dup2 does that
    close and puts, under the same descriptor number, one end of a fresh socket pair whose
    other end is gone: the server's own write then fails with EPIPE, which WSGI servers take
    for a client that hung up, and its own close releases the pair.
    """
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    mine, other = socket.socketpair()
    os.dup2(mine.fileno(), connection.fileno())
    mine.close()
    other.close()


def _knobs(state: SandboxState) -> dict[str, Any]:
    with state.lock:
        return {name: getattr(state, name) for name in KNOBS}
