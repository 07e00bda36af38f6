"""The UtilityAPI client: the one place that speaks HTTP to the vendor.

No model imports; explicit timeouts; returns a dataclass or raises from exceptions.py.
Vendor reference: shared/utilityapi-historical-collection.txt and utilityapi-notes.md.
"""

from __future__ import annotations

import email.utils
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import requests

from .exceptions import (
    AccountError,
    BadResponse,
    ConfigurationError,
    PermanentError,
    Throttled,
    TransientError,
    UtilityAPIError,
)

DEFAULT_RETRY_AFTER = 5.0  # a 429 with no usable Retry-After still waits this long
MAX_RETRY_AFTER = 3600.0  # a Retry-After further out than this is treated as this
TRANSIENT_STATUSES = {408, 502, 503, 504}
ACCOUNT_STATUSES = {401, 402}
BODY_EXCERPT = 300
DESCRIPTION_MAX = 2000  # characters of the vendor's error_description kept


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


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = json.loads(response.content or b"")
    except (ValueError, UnicodeDecodeError):
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


def raise_for_answer(response: requests.Response) -> Accepted:
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
        return raise_for_answer(response)

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET a JSON object (the meter sync, tracking); errors are typed like the POST's."""
        response = self._send("GET", self._full(url), params=params)
        if response.status_code != 200:
            raise_for_answer(response)
        body = _json_object(response)
        if body is None:
            raise BadResponse("bad_response", f"not a JSON object: {_excerpt(response)!r}")
        return body

    def patch_json(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH with a JSON body (PATCH /events/{uid}); the answer's object, or {} if none."""
        response = self._send("PATCH", self._full(url), json=body)
        if not 200 <= response.status_code < 300:
            raise_for_answer(response)
        return _json_object(response) or {}

    def _full(self, url: str) -> str:
        return url if url.startswith(("http://", "https://")) else self.base_url + url

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
        headers must not carry it into error descriptions, the admin, the logs."""
        secret = self._token.encode()
        if secret in response.content:
            response._content = response.content.replace(secret, b"[redacted]")
        return response


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
        _clients[key] = UtilityAPIClient(
            key[0], key[1], connect_timeout=key[2], read_timeout=key[3]
        )
    return _clients[key]


__all__ = [
    "Accepted",
    "UtilityAPIClient",
    "UtilityAPIError",
    "get_client",
    "parse_retry_after",
    "raise_for_answer",
]
