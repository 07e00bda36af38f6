"""A stand-in for UtilityAPI on loopback, for `make run`, the tests and the benchmark.

It serves POST /meters/historical-collection as the vendor documents it (Bearer check, the
400 error types, revoked/expired meters silently dropped, 404 when no meter exists), GET
/meters (pages of 1000 with `next`) and GET /meters/{uid}, with knobs for latency, a rate
limit answered by 429 + Retry-After, and scripted faults. Control endpoints under /_sandbox/
let tests script answers and read what arrived.

Meters: a generated registry (10 per authorization; every 20th authorization revoked, the one
before it expired). Any other uid counts as an existing meter, except uids starting with
"missing" (unknown), or "revoked"/"expired" (dropped), so tests can name the case they need.
"""

from __future__ import annotations

import json
import math
import re
import socket
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

UID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
UTILITIES = ["PG&E", "SCE", "SDG&E", "ConEd", "Duke"]
PAGE_SIZE = 1000


def _error(status: int, error: str, description: str) -> tuple[int, dict[str, Any], Any]:
    return status, {}, {"error": error, "error_description": description, "url": None}


class SandboxState:
    """Everything the sandbox knows; thread-safe."""

    def __init__(self, token: str, rate: float = 0, latency_ms: int = 0, meters: int = 12000):
        self.lock = threading.Lock()
        self.token = token
        self.rate = rate
        self.latency_ms = latency_ms
        self.meter_count = meters
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.script: deque[dict[str, Any]] = deque()
            self.calls: list[dict[str, Any]] = []
            self.window: deque[float] = deque()
            self.blocked_until = 0.0
            self.triggered: dict[str, float] = {}
            self.revoked_authorizations: set[str] = set()  # revoked later, by a test

    # --- the registry ---------------------------------------------------------------------
    def meter(self, i: int) -> dict[str, Any]:
        auth = i // 10
        auth_uid = str(5000 + auth)
        revoked = auth % 20 == 19 or auth_uid in self.revoked_authorizations
        expired = auth % 20 == 18
        uid = str(100000 + i)
        return {
            "uid": uid,
            "authorization_uid": auth_uid,
            "utility": UTILITIES[auth % len(UTILITIES)],
            "status": "pending" if uid in self.triggered else "updated",
            "status_message": "",
            "status_ts": None,
            "is_activated": True,
            "is_archived": False,
            "authorization": {"revoked": revoked, "expired": expired},
            "base": {"service_identifier": f"SID-{i}", "meter_numbers": [f"MN{i}"]},
        }

    def classify(self, uid: str) -> str:
        """'ok', 'dropped' or 'missing' for one well-formed uid."""
        if uid.startswith("missing"):
            return "missing"
        if uid.startswith(("revoked", "expired")):
            return "dropped"
        if uid.isdigit() and 0 <= int(uid) - 100000 < self.meter_count:
            a = self.meter(int(uid) - 100000)["authorization"]
            return "dropped" if a["revoked"] or a["expired"] else "ok"
        return "ok"

    # --- the rate limit -------------------------------------------------------------------
    def admit(self, now: float) -> float | None:
        """None if the call is within the limit, else the Retry-After to announce."""
        if now < self.blocked_until:
            return self.blocked_until - now
        if not self.rate:
            return None
        while self.window and self.window[0] <= now - 1.0:
            self.window.popleft()
        if len(self.window) >= self.rate:
            return max(1.0, math.ceil(self.window[0] + 1.0 - now))
        self.window.append(now)
        return None


def collect(state: SandboxState, body: Any) -> tuple[int, dict[str, Any], Any]:
    """The vendor's POST /meters/historical-collection, on a parsed JSON body."""
    if not isinstance(body, dict) or "meters" not in body or body["meters"] in (None, []):
        return _error(400, "required_param_missing", "Missing the meters list.")
    meters, duration = body["meters"], body.get("collection_duration")
    if not isinstance(meters, list) or not all(
        isinstance(m, str) and UID_RE.match(m) for m in meters
    ):
        return _error(400, "invalid_param", "Values in the meters list are invalid.")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= 36
    ):
        return _error(400, "invalid_param", "collection_duration must be from 1 to 36.")
    kinds = {m: state.classify(m) for m in meters}
    accepted = [m for m in meters if kinds[m] == "ok"]
    if not accepted:
        if all(k == "missing" for k in kinds.values()):
            return _error(404, "not_found", "None of the Meters exist.")
        return _error(
            400,
            "expired_or_revoked",
            "All of the Authorizations for these meters are expired, so nothing can be collected.",
        )
    now = time.time()
    for m in accepted:
        state.triggered[m] = now
    result: dict[str, Any] = {"success": True, "meters": accepted}
    if duration is not None:
        result["collection_duration"] = duration
    return 200, {}, result


class Handler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the body waited for the
    # client's delayed ACK, adding ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    @property
    def state(self) -> SandboxState:
        return self.server.state

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        if path.endswith("/_sandbox/stats"):
            return self._answer(200, {}, self.stats())
        if not self._authorized():
            return self._answer(*_error(401, "invalid_token", "Invalid or missing access_token."))
        if path.endswith("/meters"):
            return self._answer(200, {}, self.meters_page(parse_qs(parts.query)))
        match = re.search(r"/meters/([^/]+)$", path)
        if match and match.group(1).isdigit():
            i = int(match.group(1)) - 100000
            if 0 <= i < self.state.meter_count:
                return self._answer(200, {}, self.state.meter(i))
        self._answer(*_error(404, "not_found", "Not found."))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path.rstrip("/")
        if "/_sandbox/" in path:
            return self.control(path.rsplit("/", 1)[-1], raw)
        if not path.endswith("/meters/historical-collection"):
            return self._answer(*_error(404, "not_found", "Not found."))
        self.historical_collection(raw)

    def historical_collection(self, raw: bytes) -> None:
        state, arrived = self.state, time.time()
        call: dict[str, Any] = {"at": arrived, "meters": None}
        with state.lock:
            state.calls.append(call)
            early = arrived < state.blocked_until
            scripted = state.script.popleft() if state.script else None
        call["early"] = early
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("meters"), list):
            call["meters"] = body["meters"]
        time.sleep(state.latency_ms / 1000)
        if not self._authorized():
            return self._record(
                call, *_error(401, "invalid_token", "Invalid or missing access_token.")
            )
        if scripted is not None:
            return self.scripted(call, scripted)
        with state.lock:
            retry_after = state.admit(time.time())
            if retry_after is not None:
                state.blocked_until = max(state.blocked_until, time.time() + retry_after)
        if retry_after is not None:
            return self._record(call, 429, {"Retry-After": str(math.ceil(retry_after))}, "")
        if body is None:
            return self._record(call, *_error(400, "invalid_param", "The body must be JSON."))
        with state.lock:
            answer = collect(state, body)
        self._record(call, *answer)

    def scripted(self, call: dict[str, Any], step: dict[str, Any]) -> None:
        """Answer as a test scripted it: {"status", "body", "headers", "hang", "reset"}."""
        if step.get("hang"):
            time.sleep(float(step["hang"]))
        if step.get("reset"):
            call["status"] = "reset"
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            self.close_connection = True
            self.connection.close()
            return
        status = int(step.get("status", 200))
        headers = dict(step.get("headers") or {})
        if status == 429 and "Retry-After" in headers:
            with self.state.lock:
                seconds = _retry_after_seconds(headers["Retry-After"])
                self.state.blocked_until = max(self.state.blocked_until, time.time() + seconds)
        body = step.get("body")
        if body is None and status == 200:
            body = {"success": True, "meters": call["meters"] or []}
        self._record(call, status, headers, body if body is not None else "")

    def control(self, action: str, raw: bytes) -> None:
        state = self.state
        data = json.loads(raw or b"{}")
        if action == "reset":
            state.reset()
        elif action == "script":
            with state.lock:
                state.script.extend(data.get("responses", []))
        elif action == "revoke":
            with state.lock:
                state.revoked_authorizations.update(map(str, data.get("authorizations", [])))
        elif action == "config":
            for key in ("rate", "latency_ms", "token"):
                if key in data:
                    setattr(state, key, data[key])
        else:
            return self._answer(404, {}, {"error": "unknown control action"})
        self._answer(200, {}, {"ok": True})

    def stats(self) -> dict[str, Any]:
        with self.state.lock:
            calls = list(self.state.calls)
        by_status: dict[str, int] = {}
        for c in calls:
            by_status[str(c.get("status"))] = by_status.get(str(c.get("status")), 0) + 1
        return {
            "calls": len(calls),
            "by_status": by_status,
            "early_calls": sum(1 for c in calls if c.get("early")),
            "meters_sent": sum(len(c["meters"] or []) for c in calls),
            "log": calls,
        }

    def meters_page(self, query: dict[str, list[str]]) -> dict[str, Any]:
        state = self.state
        offset = int((query.get("offset") or ["0"])[0])
        limit = min(int((query.get("limit") or [str(PAGE_SIZE)])[0]), PAGE_SIZE)
        end = min(offset + limit, state.meter_count)
        host = self.headers.get("Host", "127.0.0.1")
        base = f"http://{host}{urlsplit(self.path).path}"
        nxt = (
            f"{base}?{urlencode({'offset': end, 'limit': limit})}"
            if end < state.meter_count
            else None
        )
        return {"meters": [state.meter(i) for i in range(offset, end)], "next": nxt}

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def _record(
        self, call: dict[str, Any], status: int, headers: dict[str, str], body: Any
    ) -> None:
        call["status"] = status
        call["answered"] = time.time()
        if "Retry-After" in headers:
            call["retry_after"] = headers["Retry-After"]
        self._answer(status, headers, body)

    def _answer(self, status: int, headers: dict[str, str], body: Any) -> None:
        is_text = isinstance(body, str | bytes)
        payload = (
            body.encode()
            if isinstance(body, str)
            else body
            if is_text
            else json.dumps(body).encode()
        )
        self.send_response(status)
        content_type = "text/html" if is_text else "application/json"
        for name, value in {"Content-Type": content_type, **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _retry_after_seconds(value: str) -> float:
    from .client import parse_retry_after

    return parse_retry_after(value)


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, state: SandboxState, host: str = "127.0.0.1", port: int = 0, verbose: bool = False
    ):
        self.state = state
        self.verbose = verbose
        super().__init__((host, port), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that hung up (timed out, or killed by a fault test) is no server error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/api/v2"

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="utilityapi-sandbox", daemon=True)
        thread.start()
        return thread
