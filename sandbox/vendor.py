"""UtilityAPI's endpoints as the sandbox answers them, once a call passed the Bearer check, the
script and the rate limit: each handler takes the state (its lock held) and the request, and
returns (status, headers, body).

POST /meters/historical-collection (the 400 error types, revoked/expired meters silently
dropped, 404 when no meter exists); GET /meters (pages of 1000 with `next`, or `?uids=a,b`, at
most 1000); GET /meters/{uid}; GET /events (newest first, pages of 1000 with `next`, filters
`is_delivered` and `after`, an event uid); GET and PATCH /events/{uid}; GET /authorizations.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from . import loop
from .state import PAGE_SIZE, UID_RE, SandboxState

Answer = tuple[int, dict[str, str], Any]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    origin: str  # scheme://host, for `next` links
    authorization: str = ""  # the Authorization header
    uid: str = ""  # the path's {uid}, if any

    def arg(self, name: str, default: str = "") -> str:
        return (self.query.get(name) or [default])[0]

    def json(self) -> Any:
        """The parsed body; None when it is no JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def link(self, **params: Any) -> str:
        return f"{self.origin}{self.path}?{urlencode(params)}"


def error(status: int, kind: str, description: str) -> Answer:
    return status, {}, {"error": kind, "error_description": description, "url": None}


NOT_FOUND = error(404, "not_found", "Not found.")


def collect(state: SandboxState, request: Request) -> Answer:
    """POST /meters/historical-collection."""
    body = request.json()
    if body is None:
        return error(400, "invalid_param", "The body must be JSON.")
    if not isinstance(body, dict) or "meters" not in body or body["meters"] in (None, []):
        return error(400, "required_param_missing", "Missing the meters list.")
    meters, duration = body["meters"], body.get("collection_duration")
    if not isinstance(meters, list) or not all(
        isinstance(m, str) and UID_RE.match(m) for m in meters
    ):
        return error(400, "invalid_param", "Values in the meters list are invalid.")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not 1 <= duration <= 36
    ):
        return error(400, "invalid_param", "collection_duration must be from 1 to 36.")
    kinds = {m: state.classify(m) for m in meters}
    accepted = [m for m in meters if kinds[m] == "ok"]
    if not accepted:
        if all(k == "missing" for k in kinds.values()):
            return error(404, "not_found", "None of the Meters exist.")
        return error(
            400,
            "expired_or_revoked",
            "All of the Authorizations for these meters are expired, so nothing can be collected.",
        )
    loop.start(state, list(dict.fromkeys(accepted)), duration, time.time())
    result: dict[str, Any] = {"success": True, "meters": accepted}
    if duration is not None:
        result["collection_duration"] = duration
    return 200, {}, result


def meters(state: SandboxState, request: Request) -> Answer:
    """GET /meters: the registry page by page, or the meters named by `uids`."""
    if "uids" in request.query:
        uids = [u for u in request.arg("uids").split(",") if u]
        if len(uids) > PAGE_SIZE:
            return error(400, "invalid_param", f"At most {PAGE_SIZE} uids a call.")
        found = (state.meter_by_uid(u) for u in dict.fromkeys(uids))
        return 200, {}, {"meters": [m for m in found if m is not None], "next": None}
    return _offset_page(request, "meters", state.meter_count, state.meter)


def meter(state: SandboxState, request: Request) -> Answer:
    """GET /meters/{uid}."""
    found = state.meter_by_uid(request.uid)
    return NOT_FOUND if found is None else (200, {}, found)


def authorizations(state: SandboxState, request: Request) -> Answer:
    """GET /authorizations, page by page."""
    listed = state.authorizations()
    return _offset_page(request, "authorizations", len(listed), listed.__getitem__)


def events(state: SandboxState, request: Request) -> Answer:
    """GET /events: newest first; `next` carries the filters and where the page stopped."""
    flag = request.arg("is_delivered")
    if flag not in ("", "true", "false"):
        return error(400, "invalid_param", "is_delivered must be true or false.")
    order = list(state.events)  # oldest first
    bounds = []
    for name in ("after", "before"):
        uid = request.arg(name)
        if uid and uid not in state.events:
            return error(400, "invalid_param", f"{name} names no event.")
        bounds.append(order.index(uid) if uid else None)
    after, before = bounds
    window = order[(after + 1 if after is not None else 0) : before]
    chosen = [state.events[u] for u in reversed(window)]
    if flag:
        chosen = [e for e in chosen if e["is_delivered"] == (flag == "true")]
    page = chosen[:PAGE_SIZE]
    nxt = None
    if len(chosen) > PAGE_SIZE:
        params = {k: v for k, v in (("is_delivered", flag), ("after", request.arg("after"))) if v}
        nxt = request.link(**params, before=page[-1]["uid"])
    return 200, {}, {"events": page, "next": nxt}


def event(state: SandboxState, request: Request) -> Answer:
    """GET /events/{uid}."""
    found = state.events.get(request.uid)
    return NOT_FOUND if found is None else (200, {}, found)


def mark_event(state: SandboxState, request: Request) -> Answer:
    """PATCH /events/{uid} with {"is_delivered": true}: the vendor stops resending it."""
    found = state.events.get(request.uid)
    if found is None:
        return NOT_FOUND
    body = request.json()
    if not isinstance(body, dict) or not isinstance(body.get("is_delivered"), bool):
        return error(400, "invalid_param", 'The body must be {"is_delivered": true or false}.')
    found["is_delivered"] = body["is_delivered"]
    return 200, {}, found


def _offset_page(request: Request, key: str, total: int, item: Any) -> Answer:
    try:
        offset = int(request.arg("offset", "0"))
        limit = min(int(request.arg("limit", str(PAGE_SIZE))), PAGE_SIZE)
    except ValueError:
        return error(400, "invalid_param", "offset and limit must be whole numbers.")
    if offset < 0 or limit < 1:
        return error(400, "invalid_param", "offset must be ≥ 0 and limit ≥ 1.")
    end = min(offset + limit, total)
    nxt = request.link(offset=end, limit=limit) if end < total else None
    return 200, {}, {key: [item(i) for i in range(offset, end)], "next": nxt}
