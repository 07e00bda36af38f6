"""How the client reads UtilityAPI's answers and where it sends its calls (HTTP mocked with
`responses` at the edge): success is 2xx only, Retry-After in both forms, vendor fields cut to
what the database keeps, listing links that stay on the API's host."""

from __future__ import annotations

import calendar
import json
import time
from typing import Any

import pytest
import requests
import responses

from collections_app import client as client_module
from collections_app.client import (
    DEFAULT_RETRY_AFTER,
    DESCRIPTION_MAX,
    MAX_PAGES,
    MAX_RETRY_AFTER,
    Accepted,
    UtilityAPIClient,
    check_destination,
    get_client,
    parse_answer,
    parse_retry_after,
    parse_vendor_time,
    vendor_text,
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
# 2015-10-21 07:28:00 UTC as epoch seconds: the `now` of the Retry-After dates below.
NOW = calendar.timegm((2015, 10, 21, 7, 28, 0))


@pytest.fixture
def api() -> UtilityAPIClient:
    return UtilityAPIClient(BASE, TOKEN, connect_timeout=1, read_timeout=2)


def answer(status: int, body: Any = b"", headers: dict[str, str] | None = None) -> Any:
    """A real requests.Response with this status and body, as the HTTP edge returns it."""
    response = requests.Response()
    response.status_code = status
    response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response.headers.update(headers or {})
    return response


SUCCESS = {"success": True, "meters": ["1"], "collection_duration": 12}


# --- success is 2xx only ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 299])
def test_a_2xx_success_object_is_accepted(status: int) -> None:
    assert parse_answer(answer(status, SUCCESS)) == Accepted(["1"], 12)


@pytest.mark.parametrize("status", [300, 301, 304, 199])
def test_a_3xx_or_1xx_carrying_a_success_object_is_not_a_success(status: int) -> None:
    """Only a 2xx triggered a collection; anything else with a success-looking body did not
    (counting it as accepted would leave a request `pending` that UtilityAPI never saw)."""
    with pytest.raises(PermanentError) as caught:
        parse_answer(answer(status, SUCCESS))
    assert caught.value.status_code == status


def test_accepted_meters_are_strings_and_a_non_integer_duration_is_unknown() -> None:
    body = {"success": True, "meters": [1, "2"], "collection_duration": "12"}
    assert parse_answer(answer(200, body)) == Accepted(["1", "2"], None)


@pytest.mark.parametrize("status", [501, 505, 520, 599])
def test_server_errors_above_500_are_transient(status: int) -> None:
    with pytest.raises(TransientError) as caught:
        parse_answer(answer(status, b"gateway trouble"))
    assert not isinstance(caught.value, BadResponse) and caught.value.status_code == status


@pytest.mark.parametrize(("status", "kind"), [(401, AccountError), (402, AccountError)])
def test_401_and_402_are_account_errors(status: int, kind: type) -> None:
    with pytest.raises(kind):
        parse_answer(answer(status, {"error": "invalid_token"}))


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422, 500])
def test_other_4xx_and_500_are_permanent(status: int) -> None:
    with pytest.raises(PermanentError) as caught:
        parse_answer(answer(status, {"error": "nope"}))
    assert not isinstance(caught.value, AccountError)


def test_a_429_carries_its_retry_after_and_the_vendors_error() -> None:
    body = {"error": "rate_limited", "error_description": "too many"}
    with pytest.raises(Throttled) as caught:
        parse_answer(answer(429, body, {"Retry-After": "12"}))
    err = caught.value
    assert (err.retry_after, err.status_code) == (12.0, 429)
    assert (err.error, err.description) == ("rate_limited", "too many")


# --- Retry-After ------------------------------------------------------------------------------


def test_an_http_date_is_read_relative_to_the_given_now() -> None:
    """Retry-After as an HTTP-date means "that long after now": the `now` given counts."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=NOW) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=NOW + 10) == 20.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:29:00 +0100", now=NOW - 3600) == 60.0


def test_an_http_date_without_a_zone_is_utc() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:45", now=NOW) == 45.0
    assert parse_retry_after("21 Oct 2015 07:28:45 -0000", now=NOW) == 45.0


def test_an_http_date_without_a_zone_is_utc_whatever_the_hosts_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:45", now=NOW) == 45.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_an_http_date_defaults_to_the_clock_without_a_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT") == 0.0  # long past
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT") == MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 7 ", 7.0),
        ("   ", DEFAULT_RETRY_AFTER),
        ("", DEFAULT_RETRY_AFTER),
        ("nan", DEFAULT_RETRY_AFTER),
        ("inf", MAX_RETRY_AFTER),
        ("-inf", 0.0),
        ("3600", 3600.0),
        ("3601", MAX_RETRY_AFTER),
        ("Wed, 21 Oct", DEFAULT_RETRY_AFTER),
        ("Mon, 45 Oct 2015 07:28:00 GMT", DEFAULT_RETRY_AFTER),
    ],
)
def test_retry_after_values_are_bounded_and_unusable_ones_wait_the_default(
    value: str, expected: float
) -> None:
    assert parse_retry_after(value, now=NOW) == expected


# --- vendor fields ----------------------------------------------------------------------------


def test_a_long_vendor_error_type_is_cut_to_what_the_database_keeps() -> None:
    """The error type goes to a 64-character column: a longer one must be cut, or saving the
    outcome fails and UtilityAPI's answer is lost."""
    body = {"error": "e" * 100, "error_description": "d" * (DESCRIPTION_MAX + 50)}
    with pytest.raises(PermanentError) as caught:
        parse_answer(answer(400, body))
    assert caught.value.error == "e" * 64
    assert caught.value.description == "d" * DESCRIPTION_MAX


def test_an_error_type_or_description_postgresql_cannot_store_is_cleaned() -> None:
    body = b'{"error": "bad\\u0000type\\ud800", "error_description": "why\\u0000"}'
    with pytest.raises(PermanentError) as caught:
        parse_answer(answer(400, body))
    assert caught.value.error == "bad\ufffdtype?"
    assert caught.value.description == "why\ufffd"


@pytest.mark.parametrize(
    "body",
    [b"", b"[1, 2]", b"not json", b'{"error": "   ", "error_description": ""}', b'{"error": 7}'],
)
def test_without_a_vendor_error_object_the_status_stands_for_it(body: bytes) -> None:
    with pytest.raises(TransientError) as caught:
        parse_answer(answer(503, body))
    assert caught.value.error == "http_503"
    assert caught.value.description.startswith("HTTP 503")


def test_a_description_is_made_of_the_body_excerpt_when_the_vendor_gives_none() -> None:
    body = b"<h1>Down   for\n\tmaintenance</h1>" + b"x" * 400
    with pytest.raises(TransientError) as caught:
        parse_answer(answer(503, body))
    description = caught.value.description
    assert description.startswith("HTTP 503: <h1>Down for maintenance</h1>xxx")
    assert description == "HTTP 503: " + " ".join(body[:300].decode().split())  # 300 bytes
    with pytest.raises(TransientError) as caught:
        parse_answer(answer(503, b""))
    assert caught.value.description == "HTTP 503 with an empty body"


def test_vendor_text_keeps_strings_and_numbers_only() -> None:
    assert vendor_text("abcdef", 3) == "abc"
    assert vendor_text("abcdef") == "abcdef"
    assert (vendor_text(5), vendor_text(1.5)) == ("5", "1.5")
    assert vendor_text(True) == vendor_text(None) == vendor_text({"a": 1}) == ""


def test_vendor_times_are_iso_8601_and_utc_without_a_zone() -> None:
    aware = parse_vendor_time(" 2024-01-02T03:04:05+02:00 ")
    assert aware is not None and aware.isoformat() == "2024-01-02T03:04:05+02:00"
    naive = parse_vendor_time("2024-01-02T03:04:05")
    assert naive is not None and naive.isoformat() == "2024-01-02T03:04:05+00:00"
    assert parse_vendor_time("2024-13-45T00:00:00") is None  # a date that does not exist
    assert parse_vendor_time("soon") is None
    assert parse_vendor_time(1700000000) is None


# --- where calls go ---------------------------------------------------------------------------


@responses.activate
def test_a_base_url_ending_in_a_slash_posts_to_the_same_endpoint() -> None:
    responses.post(URL, json=SUCCESS)
    api = UtilityAPIClient(BASE + "/", TOKEN)
    assert api.historical_collection(["1"]) == Accepted(["1"], 12)
    assert responses.calls[0].request.url == URL
    assert api.base_url == BASE and repr(api) == f"UtilityAPIClient({BASE!r})"


def test_a_base_url_keeps_its_own_last_characters() -> None:
    api = UtilityAPIClient("https://utilityapi.test/BOX//", TOKEN)
    assert api.base_url == "https://utilityapi.test/BOX"
    assert api.url == "https://utilityapi.test/BOX/meters/historical-collection"


def test_a_client_needs_a_token_and_an_http_url_and_says_which_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        UtilityAPIClient(BASE, "")
    assert str(caught.value) == "UTILITYAPI_TOKEN is not set"
    with pytest.raises(ConfigurationError) as caught:
        UtilityAPIClient("utilityapi.test/api/v2", TOKEN)
    assert str(caught.value) == "UTILITYAPI_BASE_URL must start with http:// or https://"
    assert UtilityAPIClient("http://127.0.0.1:8765/api/v2", TOKEN).url.startswith("http://")


def test_the_default_timeouts_are_5_and_30_seconds() -> None:
    assert UtilityAPIClient(BASE, TOKEN).timeout == (5.0, 30.0)


def test_the_session_sends_the_token_and_asks_for_json(
    api: UtilityAPIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    session = api.session
    assert session.headers["Authorization"] == f"Bearer {TOKEN}"
    assert session.headers["Accept"] == "application/json"
    assert session.headers["User-Agent"] == "collections-service/1.0"
    assert session.trust_env is False and session.verify is True
    assert api.session is session  # one per thread, reused


def test_the_session_reads_proxies_and_ca_bundle_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/curl.pem")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    session = UtilityAPIClient(BASE, TOKEN).session
    assert session.proxies["https"] == "http://proxy.test:3128"
    assert session.verify == "/etc/curl.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/requests.pem")
    assert UtilityAPIClient(BASE, TOKEN).session.verify == "/etc/requests.pem"


@responses.activate
def test_get_json_reads_a_path_under_the_base_url_or_a_full_url(api: UtilityAPIClient) -> None:
    responses.get(BASE + "/meters", json={"meters": []})
    responses.get("https://utilityapi.test/other", json={"next": None})
    assert api.get_json("/meters", params={"uids": "1,2"}) == {"meters": []}
    assert responses.calls[0].request.url == BASE + "/meters?uids=1%2C2"
    assert api.get_json("https://utilityapi.test/other") == {"next": None}


@responses.activate
def test_get_json_raises_the_typed_error_or_bad_response(api: UtilityAPIClient) -> None:
    responses.get(BASE + "/down", body="maintenance", status=503)
    responses.get(BASE + "/gone", json={"error": "not_found"}, status=404)
    responses.get(BASE + "/list", json=[1, 2])
    with pytest.raises(TransientError):
        api.get_json("/down")
    with pytest.raises(PermanentError):
        api.get_json("/gone")
    with pytest.raises(BadResponse) as caught:
        api.get_json("/list")
    assert caught.value.error == "bad_response"
    assert caught.value.description == "not a JSON object: '[1, 2]'"


@responses.activate
def test_on_a_plain_http_api_full_urls_are_used_as_given() -> None:
    api = UtilityAPIClient("http://127.0.0.1:8765/api/v2", TOKEN)
    responses.get("http://127.0.0.1:8765/api/v2/events?page=2", json={"events": []})
    assert api.get_json("http://127.0.0.1:8765/api/v2/events?page=2") == {"events": []}
    page = "http://127.0.0.1:8765/api/v2/events?page=3"
    assert api.next_page({"next": page}, set(), "GET /events") == page


@responses.activate
def test_patch_json_returns_the_answer_object_or_nothing(api: UtilityAPIClient) -> None:
    responses.patch(BASE + "/events/1", json={"uid": "1"})
    responses.patch(BASE + "/events/2", status=204)
    responses.patch(BASE + "/events/3", json={"error": "nope"}, status=400)
    responses.patch(BASE + "/events/4", json={"error": "later"}, status=503)
    responses.patch(BASE + "/events/5", json={"uid": "5"}, status=300)
    assert api.patch_json("/events/1", {"is_delivered": True}) == {"uid": "1"}
    assert json.loads(responses.calls[0].request.body) == {"is_delivered": True}
    assert api.patch_json("/events/2", {}) == {}
    with pytest.raises(PermanentError):
        api.patch_json("/events/3", {})
    with pytest.raises(TransientError):
        api.patch_json("/events/4", {})
    with pytest.raises(PermanentError):  # a 300 is no success
        api.patch_json("/events/5", {})


def test_a_next_link_must_stay_on_the_api_host_and_not_loop(api: UtilityAPIClient) -> None:
    """The Bearer token goes with each page's `next`: another host or scheme is refused, and
    a chain that comes back to a page it read (or never ends) stops."""
    page = BASE + "/meters?page=2"
    assert api.next_page({"next": page}, set(), "GET /meters") == page
    assert api.next_page({"next": None}, set(), "GET /meters") is None
    assert api.next_page({"next": ""}, set(), "GET /meters") is None
    assert api.next_page({}, set(), "GET /meters") is None
    refused = [
        ({"next": 5}, set(), "GET /meters gave an unusable next link: 5"),
        ({"next": "/m?p=2"}, set(), "GET /meters gave an unusable next link: '/m?p=2'"),
        (
            {"next": "https://evil.test/api/v2/m"},
            set(),
            "GET /meters gave a next link to another host",
        ),
        (
            {"next": "http://utilityapi.test/api/v2/m"},
            set(),
            "GET /meters gave a next link to another host",
        ),
        ({"next": page}, {page}, "GET /meters paging does not end (/api/v2/meters again)"),
        (
            {"next": page},
            {f"{BASE}/{i}" for i in range(MAX_PAGES)},
            "GET /meters paging does not end (/api/v2/meters again)",
        ),
    ]
    for body, visited, why in refused:
        with pytest.raises(BadResponse) as caught:
            api.next_page(body, visited, "GET /meters")
        assert (caught.value.error, caught.value.description) == ("bad_response", why)
    assert api.next_page({"next": page}, {f"{BASE}/{i}" for i in range(MAX_PAGES - 1)}, "x")


def test_plain_http_carries_only_the_sandbox_token() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_destination("http://127.0.0.1:8765/api/v2", "real-token", "sandbox-token")
    assert str(caught.value) == (
        "UTILITYAPI_BASE_URL is plain http (the sandbox) and UTILITYAPI_TOKEN is not the "
        "sandbox's token (UTILITYAPI_SANDBOX_TOKEN): refusing to send it. Unset "
        "UTILITYAPI_BASE_URL to use UtilityAPI."
    )
    check_destination("http://127.0.0.1:8765/api/v2", "sandbox-token", "sandbox-token")
    check_destination("https://utilityapi.com/api/v2", "real-token", "sandbox-token")
    check_destination("http://127.0.0.1:8765/api/v2", "", "sandbox-token")


def test_get_client_is_one_per_setting_values_and_checks_the_destination(settings: Any) -> None:
    client_module._clients.clear()
    settings.UTILITYAPI_BASE_URL, settings.UTILITYAPI_TOKEN = BASE, TOKEN
    settings.UTILITYAPI_CONNECT_TIMEOUT, settings.UTILITYAPI_READ_TIMEOUT = 3, 4
    first = get_client()
    assert get_client() is first
    assert (first.url, first.timeout) == (URL, (3, 4))
    settings.UTILITYAPI_READ_TIMEOUT = 9
    assert get_client() is not first and get_client().timeout == (3, 9)
    assert get_client().session.headers["Authorization"] == f"Bearer {TOKEN}"
    settings.UTILITYAPI_BASE_URL = "http://127.0.0.1:8765/api/v2"
    settings.UTILITYAPI_SANDBOX_TOKEN = "sandbox-token"
    with pytest.raises(ConfigurationError):
        get_client()
    settings.UTILITYAPI_TOKEN = "sandbox-token"
    assert get_client().base_url == "http://127.0.0.1:8765/api/v2"


# --- the token's echoes, in structured bodies ----------------------------------------------


def escaped(text: str) -> str:
    """`text` with its first character as a JSON escape of its URL escape (\\u0025 + hex):
    no form the pattern knows, only decoding shows it."""
    return f"\\u0025{ord(text[0]):02x}" + text[1:]


@pytest.mark.parametrize(
    "body",
    [
        '{"k": ["x", {"deep": "%s"}]}',
        '{"%s": 1}',
        '["%s"]',
    ],
)
@responses.activate
def test_a_token_hidden_anywhere_in_a_json_body_drops_the_whole_body(
    api: UtilityAPIClient, body: str
) -> None:
    responses.post(URL, body=body % escaped(TOKEN), status=503)
    with pytest.raises(TransientError) as caught:
        api.historical_collection(["1"])
    assert caught.value.description == "HTTP 503: [redacted]"


@responses.activate
def test_a_body_without_the_token_is_kept_even_with_escapes(api: UtilityAPIClient) -> None:
    responses.post(URL, body='{"a": "100% \\u0041"}', status=503)
    with pytest.raises(TransientError) as caught:
        api.historical_collection(["1"])
    assert caught.value.description == 'HTTP 503: {"a": "100% \\u0041"}'


@pytest.mark.parametrize("dash", ["%2D", "%2d", "\\u002D", "\\u002d"])
@responses.activate
def test_the_token_is_redacted_in_place_in_either_case_of_hex(
    api: UtilityAPIClient, dash: str
) -> None:
    """An escaped echo is replaced where it stands (whatever the case of its hex digits), so
    the rest of the vendor's answer stays readable."""
    echo = TOKEN.replace("-", dash)
    body = f'{{"error": "bad", "error_description": "Authorization: Bearer {echo}"}}'
    responses.post(URL, body=body, status=401, content_type="application/json")
    with pytest.raises(AccountError) as caught:
        api.historical_collection(["1"])
    assert caught.value.description == "Authorization: Bearer [redacted]"


@pytest.mark.parametrize(
    "body",
    [
        b"\\ \xff\xfe not utf-8",
        b"not json \\ at all",
        b"[" * 100_000 + b'"\\u0041"' + b"]" * 100_000,
    ],
)
@responses.activate
def test_a_body_that_cannot_be_decoded_is_kept_not_a_crash(
    api: UtilityAPIClient, body: bytes
) -> None:
    """Invalid UTF-8, broken JSON or JSON nested too deep for Python's parser: still a typed
    error with the body's excerpt (an exception of another kind would leave the request
    leased, to be POSTed again after the sweep)."""
    responses.post(URL, body=body, status=503)
    with pytest.raises(TransientError) as caught:
        api.historical_collection(["1"])
    assert caught.value.description.startswith("HTTP 503: ")
    assert "[redacted]" not in caught.value.description
