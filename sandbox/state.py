"""What the UtilityAPI sandbox knows, behind one lock: its knobs, its registry of meters and
authorizations, the collections it runs, its events, the rate limit and the scripted answers.

Registry: `meter_count` meters with uids from 100000, ten per authorization (uids from 5000);
every 20th authorization is revoked and the one before it expired. Any other well-formed uid is
an existing meter too (of authorization 4000), except uids starting with "missing" (unknown),
"revoked" or "expired" (dropped; authorizations 4001 and 4002), so tests can name the case they
need. Meters whose uid starts with "errored" end their collection `errored`. As the vendor's,
meters carry only their `authorization_uid`; revocation and expiry are in GET /authorizations.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

UID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
UTILITIES = ["PG&E", "SCE", "SDG&E", "ConEd", "Duke"]
PAGE_SIZE = 1000
DEFAULT_ROUTE = "POST /meters/historical-collection"  # the route of a step that names none
REVOKED_AT = "2025-06-01T00:00:00+00:00"  # when the registry's revoked ones were revoked
EXPIRED_AT = "2025-06-01T00:00:00+00:00"  # when the expired ones expired
EXPIRES = "2099-01-01T00:00:00+00:00"  # when the others will
# The authorizations of the uids outside the registry: (uid, revoked, expired)
LOOSE_AUTHORIZATIONS = {"ok": ("4000", False, False), "revoked": ("4001", True, False),
                        "expired": ("4002", False, True)}  # fmt: skip


class Knob(NamedTuple):
    default: Any
    check: Callable[[Any], Any]
    help: str


def _number(low: float, high: float = math.inf) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValueError("a number")
        if not low <= value <= high:
            raise ValueError(
                f"at least {low:g}" if high == math.inf else f"from {low:g} to {high:g}"
            )
        return value

    return check


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("a whole number of at least 1")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str) or (value and not re.match(r"^https?://[^\s/]+", value)):
        raise ValueError('an http(s) URL, or "" for none')
    return value


def _signing(value: Any) -> str:
    if value not in ("raw", "indent4"):
        raise ValueError('"raw" or "indent4"')
    return str(value)


KNOBS = {
    "token": Knob("sandbox-token", _text, "The Bearer token it accepts."),
    "rate": Knob(0.0, _number(0), "Vendor calls per second before 429 (0: no limit)."),
    "latency_ms": Knob(0, _number(0), "Delay before each vendor answer, in ms."),
    "collection_delay": Knob(10.0, _number(0), "Seconds a collection runs before it ends."),
    "error_fraction": Knob(0.0, _number(0, 1), "Share of collections that end errored."),
    "webhook_url": Knob("", _url, "Where events are posted (empty: no webhooks)."),
    "webhook_secret": Knob("", _text, "The secret webhook posts are signed with."),
    "webhook_batch": Knob(100, _count, "Events per webhook post, at most."),
    "webhook_drop": Knob(0.0, _number(0, 1), "Share of webhook posts never sent."),
    "webhook_duplicate": Knob(0.0, _number(0, 1), "Share of webhook posts sent twice."),
    "webhook_reorder": Knob(False, _flag, "Send each round of webhook posts newest first."),
    "webhook_sign": Knob(
        "raw", _signing, "Sign the raw body, or its 4-space re-serialisation (indent4)."
    ),
    "webhook_retry_seconds": Knob(
        30.0, _number(0), "Resend a refused webhook post after this long (0: never)."
    ),
}
WEBHOOK_TRIES = 3  # a refused post is sent at most this many times in all


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass
class Collection:
    """One meter's collection at the vendor: running until `ends`, then `outcome`."""

    meter_uid: str
    authorization_uid: str
    months: int
    started: float
    ends: float
    outcome: str  # "updated" or "errored"
    progressed: bool = False


class SandboxState:
    """Everything the sandbox knows; every read and write of it holds `lock`."""

    token: str
    rate: float
    latency_ms: float
    collection_delay: float
    error_fraction: float
    webhook_url: str
    webhook_secret: str
    webhook_batch: int
    webhook_drop: float
    webhook_duplicate: float
    webhook_reorder: bool
    webhook_sign: str
    webhook_retry_seconds: float

    def __init__(
        self,
        token: str = KNOBS["token"].default,
        rate: float = 0,
        latency_ms: float = 0,
        meters: int = 12000,
        **knobs: Any,
    ):
        self.lock = threading.RLock()
        self.wakeup = threading.Event()  # set when there is news for the background loop
        boot = secrets.token_hex(3)  # event uids stay unique across restarts
        self.event_uids = (f"{boot}-{n}" for n in itertools.count(1))
        self.random = random.Random()
        self.meter_count = meters
        for name, knob in KNOBS.items():
            setattr(self, name, knob.default)
        self.configure(token=token, rate=rate, latency_ms=latency_ms, **knobs)
        self.reset()

    def configure(self, **values: Any) -> None:
        """Set knobs by name; ValueError names the first bad one and sets none."""
        checked = {}
        for name, value in values.items():
            if name not in KNOBS:
                raise ValueError(f"unknown knob {name!r}; known: {', '.join(KNOBS)}")
            try:
                checked[name] = KNOBS[name].check(value)
            except ValueError as error:
                raise ValueError(f"{name} must be {error}, not {value!r}") from None
        with self.lock:
            for name, value in checked.items():
                setattr(self, name, value)
        self.wakeup.set()

    def reset(self) -> None:
        """Forget calls, scripts, collections and events; the knobs stay."""
        with self.lock:
            self.script: deque[dict[str, Any]] = deque()
            self.calls: list[dict[str, Any]] = []  # the historical-collection POSTs
            self.reads: dict[str, int] = {}  # other vendor calls, by route
            self.window: deque[float] = deque()
            self.blocked_until = 0.0
            self.triggered: dict[str, float] = {}  # meter uid: when its collection started
            self.collections: dict[str, Collection] = {}  # running, by meter uid
            self.finished: dict[str, dict[str, Any]] = {}  # meter uid: its fields once ended
            self.revoked_authorizations: dict[str, float] = {}  # revoked later: uid, when
            self.events: dict[str, dict[str, Any]] = {}  # by uid, oldest first
            self.unposted: list[str] = []  # uids of events no webhook post carried yet
            self.outbox: list[dict[str, Any]] = []  # refused posts to resend: events, due, tries
            self.webhook_log: list[dict[str, Any]] = []  # one entry per post: events, outcome

    # --- the registry ---------------------------------------------------------------------
    def authorization(self, a: int) -> dict[str, Any]:
        """Registry authorization number a, in the vendor's shape."""
        uid = str(5000 + a)
        revoked = REVOKED_AT if a % 20 == 19 else self._revoked_at(uid)
        return _authorization(uid, revoked, a % 20 == 18)

    def authorizations(self) -> list[dict[str, Any]]:
        """The registry's authorizations, then those of the uids outside it."""
        listed = [self.authorization(a) for a in range(math.ceil(self.meter_count / 10))]
        loose = (self._loose_authorization(kind) for kind in LOOSE_AUTHORIZATIONS)
        return listed + [a for a in loose if a is not None]

    def meter(self, i: int) -> dict[str, Any]:
        """Registry meter number i."""
        base = {"service_identifier": f"SID-{i}", "meter_numbers": [f"MN{i}"]}
        fields = {"utility": UTILITIES[i // 10 % len(UTILITIES)], "base": base}
        return self._meter(str(100000 + i), self.authorization(i // 10), fields)

    def meter_by_uid(self, uid: str) -> dict[str, Any] | None:
        """Any meter by uid (registry or not); None for an unknown one."""
        if self._in_registry(uid):
            return self.meter(int(uid) - 100000)
        auth = self._loose_authorization(uid)
        return None if auth is None else self._meter(uid, auth, {"utility": "DEMO", "base": {}})

    def authorization_for(self, uid: str) -> dict[str, Any] | None:
        """The authorization of meter `uid`; None if there is no such meter."""
        if self._in_registry(uid):
            return self.authorization((int(uid) - 100000) // 10)
        return self._loose_authorization(uid)

    def _in_registry(self, uid: str) -> bool:
        return uid.isdigit() and 0 <= int(uid) - 100000 < self.meter_count

    def _meter(self, uid: str, auth: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        meter = {
            "uid": uid,
            "authorization_uid": auth["uid"],
            "status": "pending" if uid in self.triggered else "updated",
            "status_message": "",
            "status_ts": iso(self.triggered[uid]) if uid in self.triggered else None,
            "is_activated": True,
            "is_archived": False,
            "bill_count": 0,
            "interval_count": 0,
            "notes": [],
            **fields,
        }
        meter.update(self.finished.get(uid, {}))
        return meter

    def _loose_authorization(self, uid: str) -> dict[str, Any] | None:
        """The authorization of a meter outside the registry; None if the uid is unknown."""
        if uid.startswith("missing"):
            return None
        kind = next((k for k in ("revoked", "expired") if uid.startswith(k)), "ok")
        auth_uid, revoked, expired = LOOSE_AUTHORIZATIONS[kind]
        return _authorization(auth_uid, REVOKED_AT if revoked else self._revoked_at(auth_uid),
                              expired)  # fmt: skip

    def _revoked_at(self, uid: str) -> str | None:
        """When a test revoked authorization `uid` (/_sandbox/revoke), if it did."""
        when = self.revoked_authorizations.get(uid)
        return None if when is None else iso(when)

    def classify(self, uid: str) -> str:
        """'ok', 'dropped' or 'missing' for one well-formed uid."""
        auth = self.authorization_for(uid)
        if auth is None:
            return "missing"
        return "dropped" if auth["is_revoked"] or auth["is_expired"] else "ok"

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

    def next_step(self, route: str) -> dict[str, Any] | None:
        """Take the first scripted answer meant for this route (by its "route", default the
        historical-collection POST)."""
        for step in self.script:
            if step.get("route", DEFAULT_ROUTE) == route:
                self.script.remove(step)
                return step
        return None


def _authorization(uid: str, revoked: str | None, expired: bool) -> dict[str, Any]:
    """An authorization in the vendor's shape; `revoked` is when it was, or None."""
    return {
        "uid": uid,
        "status": "updated",
        "declined": None,
        "is_declined": False,
        "revoked": revoked,
        "is_revoked": revoked is not None,
        "expires": EXPIRED_AT if expired else EXPIRES,
        "is_expired": expired,
        "is_test": False,
        "is_archived": False,
        "notes": [],
    }
