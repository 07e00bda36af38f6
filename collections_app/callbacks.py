"""Callbacks to the caller's URL: the signature, and one POST that cannot be turned against the
service's own network. The host is resolved and checked again right before the POST (DNS can
change after the URL was accepted) and the connection goes to the address that was checked;
redirects are not followed, timeouts are short and at most READ_LIMIT bytes of the answer are
read. HTTP only, no models: the outbox is services/callbacks.py, the pipeline
callback_delivery.py."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from .validation import DEFAULT_PORTS, RefusedAddress, public_addresses

SIGNATURE_HEADER = "X-Collections-Signature"
CONNECT_TIMEOUT, READ_TIMEOUT = 3.0, 5.0  # seconds
READ_LIMIT = 4096  # bytes of the receiver's answer read, at most


def signature(body: bytes, secret: str, timestamp: int) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by secret>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass(frozen=True)
class Answer:
    """What one POST got: a status code, or why none came; 2xx is delivered."""

    status_code: int | None
    error: str
    description: str
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """POST `body` to `url` once, to an address checked just now. Never raises for the
    receiver's or the network's faults: they are in the Answer."""
    started = time.monotonic()

    def answer(status: int | None, error: str = "", description: str = "") -> Answer:
        return Answer(status, error, description, int((time.monotonic() - started) * 1000))

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    try:
        address = public_addresses(host, port)[0]
    except RefusedAddress as err:
        return answer(None, "address_refused", str(err))
    pool = _pool(parts.scheme, host, address, port)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        response = pool.urlopen(
            "POST",
            path,
            body=body,
            headers={"Host": parts.netloc, **headers},
            redirect=False,
            retries=False,
            assert_same_host=False,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
            preload_content=False,
        )
        try:
            response.read(READ_LIMIT)  # a little of the answer; the rest is never read
        finally:
            response.close()
    except urllib3.exceptions.TimeoutError as err:
        return answer(None, "timeout", f"no answer within the timeouts: {type(err).__name__}")
    except urllib3.exceptions.HTTPError as err:
        return answer(None, "connection_error", f"{type(err).__name__} connecting to {address}")
    finally:
        pool.close()
    return answer(response.status, *_verdict(response.status))


def _verdict(status: int) -> tuple[str, str]:
    if 200 <= status < 300:
        return "", ""
    if 300 <= status < 400:
        return "redirect_not_followed", f"answered {status}: redirects are not followed"
    return f"http_{status}", f"answered {status}"


def _pool(scheme: str, host: str, address: str, port: int) -> urllib3.HTTPConnectionPool:
    """A pool connecting to `address`; for https the certificate must be `host`'s (SNI too)."""
    if scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address,
            port,
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            ca_certs=DEFAULT_CA_BUNDLE_PATH,
            server_hostname=host,
            assert_hostname=host,
        )
    return urllib3.HTTPConnectionPool(address, port, maxsize=1)
