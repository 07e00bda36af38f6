"""Counters of every UtilityAPI call, fleet-wide: how many by endpoint and status code, and
a latency histogram by endpoint, kept in the shared Redis (REDIS_URL) so /metrics, served by
any web process, shows the calls every worker made (docs/dashboard.md).

`observed` wraps the client's one sending method; a call's figures are one pipelined write,
and a Redis error loses the figures, never the call.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from .. import redis_state

log = logging.getLogger(__name__)
KEY = "collections:metrics:utilityapi_calls"
# Upper bounds (seconds) of the latency buckets; +Inf is implied.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ID_SEGMENT = re.compile(r"/[^/]*\d[^/]*")  # a path segment with a digit is an id


def endpoint(method: str, url: str, base_url: str) -> str:
    """ "POST /meters/historical-collection": the path under the API root, ids as {id}."""
    path = urlsplit(url).path.removeprefix(urlsplit(base_url).path) or "/"
    return f"{method} {ID_SEGMENT.sub('/{id}', path)}"


def record(name: str, status: str, seconds: float) -> None:
    bucket = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
    try:
        pipe = redis_state.quick_connection().pipeline(transaction=False)
        pipe.hincrby(KEY, f"calls|{name}|{status}", 1)
        pipe.hincrby(KEY, f"bucket|{name}|{bucket}", 1)
        pipe.hincrbyfloat(KEY, f"sum|{name}", seconds)
        pipe.execute()
    except Exception as err:  # redis errors vary; the figures are not worth failing a call
        log.warning("cannot count a UtilityAPI call: %s", type(err).__name__)


def observed(send: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates UtilityAPIClient._send(method, url, ...): counts each call and its latency;
    a call that got no answer (timeout, connection error) counts as status "error"."""

    @functools.wraps(send)
    def wrapper(client: Any, method: str, url: str, **kwargs: Any) -> Any:
        started, status = time.monotonic(), "error"
        try:
            response = send(client, method, url, **kwargs)
            status = str(response.status_code)
            return response
        finally:
            record(endpoint(method, url, client.base_url), status, time.monotonic() - started)

    return wrapper


@dataclass
class Latency:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        bounds = [*(f"{b:g}" for b in BUCKETS), "+Inf"]
        running, out = 0, []
        for bound, count in zip(bounds, self.buckets, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


def read() -> tuple[dict[tuple[str, str], int], dict[str, Latency]]:
    """Calls by (endpoint, status) and latency by endpoint, as recorded so far."""
    calls: dict[tuple[str, str], int] = {}
    latency: dict[str, Latency] = defaultdict(Latency)
    raw = cast(dict[bytes, bytes], redis_state.quick_connection().hgetall(KEY))
    for raw_field, raw_value in raw.items():
        kind, name, rest = [*raw_field.decode().split("|"), "", ""][:3]
        if kind == "calls":
            calls[(name, rest)] = int(raw_value)
        elif kind == "bucket":
            latency[name].buckets[int(rest)] = int(raw_value)
        elif kind == "sum":
            latency[name].total = float(raw_value)
    return calls, dict(latency)
