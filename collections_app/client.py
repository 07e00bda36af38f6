"""The UtilityAPI client: the one place that speaks HTTP to the vendor.

No model imports; explicit timeouts; returns a dataclass or raises from exceptions.py. Every
call it makes is run through collections_app.gate by its caller.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import json
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from django.utils.dateparse import parse_datetime

from .exceptions import (
    AccountError,
    BadResponse,
    ConfigurationError,
    PermanentError,
    Throttled,
    TransientError,
    UtilityAPIError,
)
from .gate import telemetry

DEFAULT_RETRY_AFTER = 5.0  # a 429 with no usable Retry-After still waits this long
MAX_RETRY_AFTER = 3600.0  # a Retry-After further out than this is treated as this
TRANSIENT_STATUSES = {408, 502, 503, 504}
ACCOUNT_STATUSES = {401, 402}
BODY_EXCERPT = 300
DESCRIPTION_MAX = 2000  # characters of the vendor's error_description kept
MAX_PAGES = 10_000  # a `next` chain longer than this is a vendor loop, not a listing


@dataclass(frozen=True)
class Accepted:
    """UtilityAPI's 200: the meters it triggered (revoked or expired ones silently dropped)."""

    meters: list[str]
    collection_duration: int | None


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Missing or unparsable values give DEFAULT_RETRY_AFTER; the result is within [0, MAX].
    """
    if not value or not value.strip():
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def parse_vendor_time(value: Any) -> datetime | None:
    """A timestamp from a vendor object (ISO 8601; no zone means UTC), or None when it is
    missing or not a time."""
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value.strip())
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def vendor_text(value: Any, limit: int | None = None) -> str:
    """A string field from a vendor object: numbers become text, anything else empty."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    return str(value)[:limit]


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = json.loads(response.content or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):  # too deep is not an object either
        return None
    return body if isinstance(body, dict) else None


def _storable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, without what PostgreSQL cannot keep in a text column
    (NUL, and lone surrogates, which escaped JSON may carry): a vendor's answer must never
    make the recording of its outcome fail."""
    text = text[:limit].replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8")


def _excerpt(response: requests.Response) -> str:
    text = response.content[:BODY_EXCERPT].decode("utf-8", "replace")
    return _storable(" ".join(text.split()), BODY_EXCERPT)


def _vendor_error(response: requests.Response) -> tuple[str, str]:
    """The vendor's error object when there is one, else a description of what came back."""
    body = _json_object(response) or {}
    error, description = body.get("error"), body.get("error_description")
    fallback = f"HTTP {response.status_code}"
    error = (
        error if isinstance(error, str) and error.strip() else fallback.lower().replace(" ", "_")
    )
    if not isinstance(description, str) or not description.strip():
        excerpt = _excerpt(response)
        description = f"{fallback}: {excerpt}" if excerpt else f"{fallback} with an empty body"
    return _storable(error, 64), _storable(description, DESCRIPTION_MAX)


def _accepted(response: requests.Response) -> Accepted:
    body = _json_object(response)
    meters = body.get("meters") if body else None
    if not body or body.get("success") is not True or not isinstance(meters, list):
        raise BadResponse(
            "bad_response",
            f"HTTP {response.status_code} without the success object: {_excerpt(response)!r}",
            status_code=response.status_code,
        )
    duration = body.get("collection_duration")
    return Accepted(
        meters=[str(m) for m in meters],
        collection_duration=duration if isinstance(duration, int) else None,
    )


def parse_answer(response: requests.Response) -> Accepted:
    """Map one HTTP answer to Accepted or to the typed error the retry policy acts on."""
    code = response.status_code
    if 200 <= code < 300:
        return _accepted(response)
    error, description = _vendor_error(response)
    kwargs: dict[str, Any] = {"status_code": code}
    if code == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise Throttled(error, description, retry_after=retry_after, **kwargs)
    if code in ACCOUNT_STATUSES:
        raise AccountError(error, description, **kwargs)
    if code in TRANSIENT_STATUSES or (code > 500):
        raise TransientError(error, description, **kwargs)
    raise PermanentError(error, description, **kwargs)  # 400, 404, 500, 3xx, other 4xx


class UtilityAPIClient:
    """POSTs to /meters/historical-collection with the Bearer token and explicit timeouts."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        if not token:
            raise ConfigurationError("UTILITYAPI_TOKEN is not set")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError("UTILITYAPI_BASE_URL must start with http:// or https://")
        self.url = base_url.rstrip("/") + "/meters/historical-collection"
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self._token = token
        self._local = threading.local()  # requests.Session is not thread-safe

    def __repr__(self) -> str:  # never show the token
        return f"UtilityAPIClient({self.base_url!r})"

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            # What trust_env would read from the environment on every request (a scan of
            # os.environ each time), read once: proxies and a CA bundle. No .netrc: the
            # Authorization header is ours.
            session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
            env = os.environ
            session.verify = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or True
            session.trust_env = False
            session.headers.update(
                {
                    "Authorization": f"Bearer {self._token}",
                    "Accept": "application/json",
                    "User-Agent": "collections-service/1.0",
                }
            )
        return session

    def historical_collection(
        self, meters: list[str], collection_duration: int | None = None
    ) -> Accepted:
        """Trigger one collection; raises a UtilityAPIError subclass when nothing was triggered."""
        body: dict[str, Any] = {"meters": meters}
        if collection_duration is not None:
            body["collection_duration"] = collection_duration
        response = self._send("POST", self.url, json=body)
        return parse_answer(response)

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET a JSON object (a path under the base URL, or a full URL such as a page's
        `next`); errors are typed like the POST's."""
        response = self._send("GET", self._full(url), params=params)
        if response.status_code != 200:
            parse_answer(response)  # raises the typed error
        body = _json_object(response)
        if body is None:
            raise BadResponse("bad_response", f"not a JSON object: {_excerpt(response)!r}")
        return body

    def next_page(self, body: dict[str, Any], visited: set[str], endpoint: str) -> str | None:
        """A listing page's `next` link, checked: it must stay on the API's host, since the
        Bearer token goes with it, and must not loop. `visited` holds the pages read."""
        nxt = body.get("next")
        if nxt is None or nxt == "":
            return None
        if not isinstance(nxt, str) or not nxt.startswith(("http://", "https://")):
            raise BadResponse("bad_response", f"{endpoint} gave an unusable next link: {nxt!r}")
        if urlsplit(nxt)[:2] != urlsplit(self.base_url)[:2]:
            raise BadResponse("bad_response", f"{endpoint} gave a next link to another host")
        if nxt in visited or len(visited) >= MAX_PAGES:
            where = urlsplit(nxt).path
            raise BadResponse("bad_response", f"{endpoint} paging does not end ({where} again)")
        return nxt

    def patch_json(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH with a JSON body (PATCH /events/{uid}); the answer's object, or {} if none."""
        response = self._send("PATCH", self._full(url), json=body)
        if not 200 <= response.status_code < 300:
            parse_answer(response)  # raises the typed error
        return _json_object(response) or {}

    def _full(self, url: str) -> str:
        return url if url.startswith(("http://", "https://")) else self.base_url + url

    @telemetry.observed
    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(
                method, url, timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.Timeout as err:
            raise TransientError("timeout", f"no answer within {self.timeout[1]:g}s") from err
        except requests.ConnectionError as err:
            raise TransientError("connection_error", type(err).__name__) from err
        except requests.RequestException as err:
            raise TransientError("request_error", type(err).__name__) from err
        return self._redacted(response)

    def _redacted(self, response: requests.Response) -> requests.Response:
        """The answer without our token: a proxy or debug page that echoes the request's
        headers must not carry it into error descriptions, the admin, the logs. The token is
        found as itself, JSON-escaped (\\u0075…) and URL-escaped (%75…), in any mix; a body
        that still holds it once decoded (JSON, then URL) is dropped whole."""
        content = _secret_pattern(self._token).sub(b"[redacted]", response.content)
        escaped = b"\\" in content or b"%" in content  # else decoding changes nothing
        if escaped and any(self._token in text for text in _decoded_texts(content)):
            content = b"[redacted]"
        response._content = content
        return response


@functools.cache
def _secret_pattern(token: str) -> re.Pattern[bytes]:
    """Each character of `token` as itself, \\uXXXX (either case) or %XX (either case)."""

    def forms(char: str) -> bytes:
        hex_bytes = char.encode().hex()
        url = b"".join(
            b"%" + _either_case(hex_bytes[i : i + 2]) for i in range(0, len(hex_bytes), 2)
        )
        json_escape = b"\\\\u" + _either_case(f"{ord(char):04x}") if ord(char) <= 0xFFFF else b""
        return b"(?:" + b"|".join(filter(None, [re.escape(char.encode()), json_escape, url])) + b")"

    return re.compile(b"".join(forms(char) for char in token))


def _either_case(hex_digits: str) -> bytes:
    return b"".join(
        f"[{d.lower()}{d.upper()}]".encode() if d.isalpha() else d.encode() for d in hex_digits
    )


def _decoded_texts(content: bytes) -> list[str]:
    """The body as text, and each string in it when it is JSON, each also URL-decoded."""
    text = content.decode("utf-8", "replace")
    texts = [text]
    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
        texts += _json_strings(json.loads(content))
    return texts + [urllib.parse.unquote(t) for t in texts]


def _json_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return [s for item in value for s in _json_strings(item)]
    return []


def check_destination(base_url: str, token: str, sandbox_token: str) -> None:
    """Only the sandbox speaks plain http: refuse to send it any token but its own, so a real
    token never crosses the network in clear or reaches the sandbox (whose 401 would pause
    the fleet)."""
    if token and base_url.startswith("http://") and token != sandbox_token:
        raise ConfigurationError(
            "UTILITYAPI_BASE_URL is plain http (the sandbox) and UTILITYAPI_TOKEN is not the "
            "sandbox's token (UTILITYAPI_SANDBOX_TOKEN): refusing to send it. Unset "
            "UTILITYAPI_BASE_URL to use UtilityAPI."
        )


_clients: dict[tuple[Any, ...], UtilityAPIClient] = {}


def get_client() -> UtilityAPIClient:
    """The process's client for the current settings (one per setting values, so tests may
    override settings)."""
    from django.conf import settings

    key = (
        settings.UTILITYAPI_BASE_URL,
        settings.UTILITYAPI_TOKEN,
        settings.UTILITYAPI_CONNECT_TIMEOUT,
        settings.UTILITYAPI_READ_TIMEOUT,
    )
    if key not in _clients:
        check_destination(key[0], key[1], settings.UTILITYAPI_SANDBOX_TOKEN)
        _clients[key] = UtilityAPIClient(
            key[0], key[1], connect_timeout=key[2], read_timeout=key[3]
        )
    return _clients[key]


__all__ = [
    "Accepted",
    "UtilityAPIClient",
    "UtilityAPIError",
    "check_destination",
    "get_client",
    "parse_answer",
    "parse_retry_after",
]
