"""The UtilityAPI client, one test per status code and body shape (HTTP mocked with responses)."""

from __future__ import annotations

import email.utils
import json
import time
import urllib.parse

import pytest
import requests
import responses

from collections_app.client import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    Accepted,
    UtilityAPIClient,
    parse_retry_after,
)
from collections_app.exceptions import (
    AccountError,
    BadResponse,
    ConfigurationError,
    PermanentError,
    Throttled,
    TransientError,
)

BASE = "https://utilityapi.test/api/v2"
URL = BASE + "/meters/historical-collection"
TOKEN = "secret-token-123"


@pytest.fixture
def client() -> UtilityAPIClient:
    return UtilityAPIClient(BASE, TOKEN, connect_timeout=1, read_timeout=2)


def vendor_error(error: str, description: str = "why") -> dict[str, object]:
    return {"error": error, "error_description": description, "url": None}


@responses.activate
def test_200_returns_the_triggered_meters_and_sends_bearer_and_body(
    client: UtilityAPIClient,
) -> None:
    responses.post(URL, json={"success": True, "meters": ["1", "2"], "collection_duration": 12})
    result = client.historical_collection(["1", "2", "3"], 12)
    assert result == Accepted(meters=["1", "2"], collection_duration=12)
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(sent.body) == {"meters": ["1", "2", "3"], "collection_duration": 12}


@responses.activate
def test_200_without_duration_omits_it_from_the_body(client: UtilityAPIClient) -> None:
    responses.post(URL, json={"success": True, "meters": ["1"]})
    assert client.historical_collection(["1"]).collection_duration is None
    assert json.loads(responses.calls[0].request.body) == {"meters": ["1"]}


@pytest.mark.parametrize(
    "body",
    [
        b"<html>proxy</html>",
        b"",
        b"[]",
        b'{"success": true}',
        b'{"success": false, "meters": []}',
        b'{"meters": "1"}',
        b"\xff\xfe",
    ],
)
@responses.activate
def test_200_without_the_success_object_is_a_bad_response(
    client: UtilityAPIClient, body: bytes
) -> None:
    responses.post(URL, body=body, status=200)
    with pytest.raises(BadResponse) as caught:
        client.historical_collection(["1"])
    assert caught.value.error == "bad_response" and caught.value.status_code == 200
    assert isinstance(caught.value, TransientError)


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (400, "invalid_param", PermanentError),
        (400, "required_param_missing", PermanentError),
        (400, "expired_or_revoked", PermanentError),
        (400, "some_future_type", PermanentError),
        (401, "invalid_token", AccountError),
        (402, "payment_required", AccountError),
        (404, "not_found", PermanentError),
    ],
)
@responses.activate
def test_4xx_carry_the_vendor_error_object(
    client: UtilityAPIClient, status: int, error: str, kind: type
) -> None:
    responses.post(URL, json=vendor_error(error, "the vendor says why"), status=status)
    with pytest.raises(kind) as caught:
        client.historical_collection(["1"])
    assert (caught.value.error, caught.value.description) == (error, "the vendor says why")
    assert caught.value.status_code == status


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>Internal error</body></html>", "text/html"),
        (b"", "text/plain"),
        (json.dumps(vendor_error("server_error", "boom")).encode(), "application/json"),
    ],
)
@responses.activate
def test_500_is_permanent_whatever_the_body(
    client: UtilityAPIClient, body: bytes, content_type: str
) -> None:
    responses.post(URL, body=body, status=500, content_type=content_type)
    with pytest.raises(PermanentError) as caught:
        client.historical_collection(["1"])
    assert caught.value.status_code == 500 and caught.value.error
    assert caught.value.description


@pytest.mark.parametrize("status", [503, 504, 502, 408])
@pytest.mark.parametrize("body", [b"<h1>Maintenance</h1>", b"", b'{"error": "down"}', b"\x00\xff"])
@responses.activate
def test_503_504_are_transient_with_any_body(
    client: UtilityAPIClient, status: int, body: bytes
) -> None:
    responses.post(URL, body=body, status=status)
    with pytest.raises(TransientError) as caught:
        client.historical_collection(["1"])
    assert not isinstance(caught.value, Throttled | BadResponse)
    assert caught.value.status_code == status


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (None, DEFAULT_RETRY_AFTER),
        ("soon", DEFAULT_RETRY_AFTER),
        ("-3", 0.0),
        ("99999999", MAX_RETRY_AFTER),
    ],
)
@responses.activate
def test_429_parses_retry_after(
    client: UtilityAPIClient, header: str | None, expected: float
) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    responses.post(URL, body="<html>slow down</html>", status=429, headers=headers)
    with pytest.raises(Throttled) as caught:
        client.historical_collection(["1"])
    assert caught.value.retry_after == pytest.approx(expected)


def test_retry_after_http_date() -> None:
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(
        30, abs=1
    )
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0  # already passed
    assert parse_retry_after("Wed, 99 Foo 2015 07:28:00 GMT", now) == DEFAULT_RETRY_AFTER


@pytest.mark.parametrize(
    ("exception", "error"),
    [
        (requests.ConnectTimeout(), "timeout"),
        (requests.ReadTimeout(), "timeout"),
        (requests.ConnectionError("reset"), "connection_error"),
        (requests.exceptions.ChunkedEncodingError(), "request_error"),
    ],
)
@responses.activate
def test_network_failures_are_transient(
    client: UtilityAPIClient, exception: Exception, error: str
) -> None:
    responses.post(URL, body=exception)
    with pytest.raises(TransientError) as caught:
        client.historical_collection(["1"])
    assert caught.value.error == error and caught.value.status_code is None
    assert isinstance(caught.value.__cause__, requests.RequestException)


@responses.activate
def test_redirects_are_not_followed(client: UtilityAPIClient) -> None:
    responses.post(URL, status=302, headers={"Location": "https://elsewhere.test/"})
    with pytest.raises(PermanentError):
        client.historical_collection(["1"])
    assert len(responses.calls) == 1


def test_configuration_errors_are_not_retryable() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ConfigurationError) as caught:
        UtilityAPIClient(BASE, "")
    assert isinstance(caught.value, ImproperlyConfigured)
    with pytest.raises(ConfigurationError):
        UtilityAPIClient("ftp://nowhere", TOKEN)


@responses.activate
def test_the_token_never_shows_in_errors_or_repr(client: UtilityAPIClient) -> None:
    responses.post(URL, json=vendor_error("invalid_token"), status=401)
    with pytest.raises(AccountError) as caught:
        client.historical_collection(["1"])
    assert TOKEN not in str(caught.value) + repr(caught.value) + repr(client)


@responses.activate
def test_the_explicit_timeout_is_sent(client: UtilityAPIClient) -> None:
    seen = {}

    def callback(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps({"success": True, "meters": ["1"]})

    responses.add_callback(responses.POST, URL, callback=callback)
    original = client.session.request

    def spy(*args: object, **kwargs: object) -> requests.Response:
        seen.update(kwargs)
        return original(*args, **kwargs)

    client.session.request = spy  # type: ignore[method-assign]
    client.historical_collection(["1"])
    assert seen["timeout"] == (1, 2) and seen["allow_redirects"] is False


# --- the token's escaped forms ----------------------------------------------------------------


def json_escaped(text: str, every: int = 1) -> str:
    return "".join(f"\\u{ord(c):04x}" if i % every == 0 else c for i, c in enumerate(text))


def url_escaped(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


@pytest.mark.parametrize(
    "echo",
    [
        json_escaped(TOKEN),  # every character escaped
        json_escaped(TOKEN, every=3),  # a mix
        json_escaped(TOKEN).upper().replace("\\U", "\\u"),  # upper-case hex
        url_escaped(TOKEN),
        url_escaped(TOKEN).lower(),
        "\\u0025" + url_escaped(TOKEN)[1:],  # URL-escaped inside a JSON escape
    ],
)
@responses.activate
def test_escaped_echoes_of_the_token_are_redacted(client: UtilityAPIClient, echo: str) -> None:
    """A vendor error echoing the token JSON- or URL-escaped: the decoded type, description
    and the error's text never hold it."""
    body = f'{{"error": "bad_{echo}", "error_description": "Authorization: Bearer {echo}"}}'
    responses.post(URL, body=body, status=401, content_type="application/json")
    with pytest.raises(AccountError) as caught:
        client.historical_collection(["m-1"])
    err = caught.value
    texts = [err.error, err.description, str(err), repr(err)]
    assert not [t for t in texts if TOKEN in t or TOKEN in urllib.parse.unquote(t)], texts
    assert "[redacted]" in err.description


@responses.activate
def test_an_url_escaped_token_in_a_proxy_page_is_redacted_from_the_excerpt(
    client: UtilityAPIClient,
) -> None:
    responses.post(URL, body=f"<p>GET /?access_token={url_escaped(TOKEN)}</p>", status=200)
    with pytest.raises(BadResponse) as caught:
        client.historical_collection(["m-1"])
    assert TOKEN not in urllib.parse.unquote(caught.value.description)
    assert "access_token=[redacted]" in caught.value.description
