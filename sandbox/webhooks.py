"""The sandbox's webhook posts: its events sent to `webhook_url` as UtilityAPI sends them.

A post is `{"events": [...], "next": null}` with `X-UtilityAPI-Webhook-Salt` and
`X-UtilityAPI-Webhook-Signature`, the hex SHA-256 of "<secret>.<salt>.<body>" (the raw body, or
its 4-space re-serialisation with `webhook_sign="indent4"`). A 200 marks its events delivered;
a refusal is sent again after `webhook_retry_seconds`, up to WEBHOOK_TRIES times. Knobs drop a
share of the posts (never sent: polling must find them), send a share twice (the same bytes:
a replay), and send each round newest first. Runs on the background thread only.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import requests

from .state import WEBHOOK_TRIES, SandboxState

TIMEOUT = 5.0  # seconds a receiver has to answer


def signature(secret: str, salt: str, body: bytes) -> str:
    return hashlib.sha256(f"{secret}.{salt}.".encode() + body).hexdigest()


def deliver(state: SandboxState, http: requests.Session, now: float) -> None:
    """One round: the events no post carried yet, in posts of `webhook_batch`, then the
    refused posts due again."""
    with state.lock:
        url, batch = state.webhook_url, state.webhook_batch
        fresh, state.unposted = state.unposted, []
        due = [p for p in state.outbox if p["due"] <= now]
        state.outbox = [p for p in state.outbox if p["due"] > now]
        posts = [{"events": fresh[i : i + batch], "tries": 0} for i in range(0, len(fresh), batch)]
        posts += due
        if state.webhook_reorder:
            posts.reverse()
    for post in posts:
        if url:
            _send(state, http, url, post, now)


def _send(
    state: SandboxState, http: requests.Session, url: str, post: dict[str, Any], now: float
) -> None:
    with state.lock:
        events = [dict(state.events[u]) for u in post["events"] if u in state.events]
        dropped = post["tries"] == 0 and state.random.random() < state.webhook_drop
        times = 2 if state.random.random() < state.webhook_duplicate else 1
        secret, sign, retry = state.webhook_secret, state.webhook_sign, state.webhook_retry_seconds
    entry = {"events": post["events"], "try": post["tries"] + 1, "statuses": []}
    if not events or dropped:
        entry["dropped"] = dropped
        return _log(state, entry)
    body = json.dumps({"events": events, "next": None}).encode()
    signed = json.dumps(json.loads(body), indent=4).encode() if sign == "indent4" else body
    salt = secrets.token_hex(8)
    headers = {"Content-Type": "application/json", "X-UtilityAPI-Webhook-Salt": salt,
               "X-UtilityAPI-Webhook-Signature": signature(secret, salt, signed)}  # fmt: skip
    for _ in range(times):
        entry["statuses"].append(_post(http, url, body, headers))
    with state.lock:
        if 200 in entry["statuses"]:
            for uid in post["events"]:
                if uid in state.events:
                    state.events[uid]["is_delivered"] = True
        elif retry and post["tries"] + 1 < WEBHOOK_TRIES:
            state.outbox.append({**post, "tries": post["tries"] + 1, "due": now + retry})
    _log(state, entry)


def _post(http: requests.Session, url: str, body: bytes, headers: dict[str, str]) -> int | str:
    """The receiver's status, or the name of the error that stopped the post."""
    try:
        answer = http.post(url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False)
        return answer.status_code
    except requests.RequestException as caught:
        return type(caught).__name__


def _log(state: SandboxState, entry: dict[str, Any]) -> None:
    with state.lock:
        state.webhook_log.append(entry)
