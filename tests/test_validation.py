"""The input rules every entry point shares (collections_app/validation.py): what is refused,
with which message and UtilityAPI error code, and which callback URLs may be reached."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from collections_app import validation
from collections_app.validation import (
    RefusedAddress,
    clean_callback_url,
    clean_duration,
    clean_idempotency_key,
    clean_meters,
    ordinal,
    parse_meter_text,
    public_addresses,
    uid_characters_ok,
)


def messages(caught: pytest.ExceptionInfo[ValidationError], field: str) -> list[tuple[str, str]]:
    """(message, code) of each error of `field`; the error names only that field."""
    assert list(caught.value.error_dict) == [field]
    return [(e.message, e.code) for e in caught.value.error_dict[field]]


# --- meters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", []])
def test_no_meters_is_a_missing_parameter(value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        clean_meters(value)
    assert messages(caught, "meters") == [
        ("meters is required: give at least one meter uid.", "required_param_missing")
    ]


@pytest.mark.parametrize("value", ["m-1", {"m": 1}, ("m-1",), 7])
def test_meters_must_be_a_list(value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        clean_meters(value)
    assert messages(caught, "meters") == [
        ("meters must be a list of meter uid strings.", "invalid_param")
    ]


def test_the_meter_limit_is_inclusive(settings: Any) -> None:
    settings.COLLECTIONS_MAX_METERS_PER_REQUEST = 3
    assert clean_meters(["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(ValidationError) as caught:
        clean_meters(["a", "b", "c", "d"])
    assert messages(caught, "meters") == [
        ("meters has 4 uids; at most 3 are allowed.", "invalid_param")
    ]


def test_every_bad_uid_is_reported_at_once_by_its_position() -> None:
    """One message per bad or repeated uid, in list order, positions as people count."""
    uids = ["ok", 5, " ", "a b", "ok", "x" * 65, None, "ok"]
    with pytest.raises(ValidationError) as caught:
        clean_meters(uids)
    found = messages(caught, "meters")
    assert all(code == "invalid_param" for _, code in found)
    assert [m for m, _ in found] == [
        "meters: the 2nd meter must be a string uid, not int.",
        "meters: the 3rd meter is blank.",
        "meters: the 4th meter ('a b') is not a meter uid: at most 64 characters, no spaces and "
        "no control, format, private-use or unassigned characters.",
        "meters lists ok more than once (the 1st and 5th meters).",
        f"meters: the 6th meter ({'x' * 64!r}) is not a meter uid: at most 64 characters, no "
        "spaces and no control, format, private-use or unassigned characters.",
        "meters: the 7th meter must be a string uid, not NoneType.",
        "meters lists ok more than once (the 1st and 8th meters).",
    ]


def test_a_uid_of_64_characters_is_kept_and_the_list_is_a_copy() -> None:
    uids = ["x" * 64, "é-1", "m/2"]
    cleaned = clean_meters(uids)
    assert cleaned == uids and cleaned is not uids


@pytest.mark.parametrize(
    "uid",
    ["a\tb", "a\u200bb", "a\u202eb", "a\ue000b", "a\u0378b", "a\u00a0b", "a\u2028b", "a\u2029b"],
)
def test_uids_with_invisible_or_unassigned_characters_are_refused(uid: str) -> None:
    assert not uid_characters_ok(uid)
    with pytest.raises(ValidationError):
        clean_meters([uid])


def test_visible_characters_are_fine_in_a_uid() -> None:
    assert uid_characters_ok("Zähler-Nr.7_ü/ß")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (4, "4th"),
        (9, "9th"),
        (10, "10th"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (20, "20th"),
        (21, "21st"),
        (22, "22nd"),
        (23, "23rd"),
        (100, "100th"),
        (101, "101st"),
        (111, "111th"),
        (112, "112th"),
        (121, "121st"),
    ],
)
def test_ordinals_are_as_people_count(n: int, text: str) -> None:
    assert ordinal(n) == text


def test_typed_meter_text_splits_on_lines_and_commas() -> None:
    assert parse_meter_text(" a, b\n\nc\r\nd,,") == ["a", "b", "c", "d"]
    assert parse_meter_text("") == [] and parse_meter_text(None) == []  # type: ignore[arg-type]


# --- collection_duration and the idempotency key --------------------------------------------


@pytest.mark.parametrize("months", [None, 1, 12, 36])
def test_a_duration_from_1_to_36_months_or_none_is_kept(months: int | None) -> None:
    assert clean_duration(months) == months


@pytest.mark.parametrize("months", [0, 37, -1])
def test_a_duration_outside_1_to_36_is_refused_with_the_range(months: int) -> None:
    with pytest.raises(ValidationError) as caught:
        clean_duration(months)
    assert messages(caught, "collection_duration") == [
        (f"collection_duration must be from 1 to 36 months, not {months}.", "invalid_param")
    ]


@pytest.mark.parametrize("months", ["12", 12.0, True, [12]])
def test_a_duration_must_be_a_whole_number(months: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        clean_duration(months)
    assert messages(caught, "collection_duration") == [
        (
            "collection_duration must be a whole number of months from 1 to 36, or null.",
            "invalid_param",
        )
    ]


def test_idempotency_keys_are_printable_ascii_up_to_255() -> None:
    assert clean_idempotency_key("") == ""
    assert clean_idempotency_key(" ~ok-1 ") == " ~ok-1 "
    assert clean_idempotency_key("k" * 255) == "k" * 255
    with pytest.raises(ValidationError) as caught:
        clean_idempotency_key("k" * 256)
    assert messages(caught, "idempotency_key") == [
        ("idempotency_key is longer than 255 characters.", "invalid_param")
    ]
    for bad in ["tab\there", "é", None, 5]:
        with pytest.raises(ValidationError) as caught:
            clean_idempotency_key(bad)
        assert messages(caught, "idempotency_key") == [
            ("idempotency_key may hold printable ASCII characters only.", "invalid_param")
        ]


# --- callback URLs ----------------------------------------------------------------------------


@pytest.fixture
def signing(settings: Any) -> Any:
    settings.COLLECTIONS_CALLBACK_SECRET = "s" * 32
    settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = False
    settings.DEBUG = False
    return settings


def refused(value: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        clean_callback_url(value)
    ((message, code),) = messages(caught, "callback_url")
    assert code == "invalid_param"
    return message


def test_no_callback_is_none_and_needs_no_secret(settings: Any) -> None:
    settings.COLLECTIONS_CALLBACK_SECRET = ""
    assert clean_callback_url(None) is None
    assert "no COLLECTIONS_CALLBACK_SECRET" in refused("https://8.8.8.8/hook")


def test_a_public_https_callback_is_kept(signing: Any) -> None:
    assert clean_callback_url("https://8.8.8.8/hook?x=1") == "https://8.8.8.8/hook?x=1"
    assert clean_callback_url("https://8.8.8.8:8443/") == "https://8.8.8.8:8443/"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "callback_url must be a URL of 1 to 2000 characters, or null."),
        (5, "callback_url must be a URL of 1 to 2000 characters, or null."),
        (
            "https://8.8.8.8/" + "a" * 1985,
            "callback_url must be a URL of 1 to 2000 characters, or null.",
        ),
        ("https://8.8.8.8/a b", "callback_url may hold printable ASCII characters only."),
        ("https://8.8.8.8/é", "callback_url may hold printable ASCII characters only."),
        ("https://8.8.8.8:99999/", "callback_url is not a valid URL."),
        ("http://8.8.8.8/hook", "callback_url must be an absolute https URL."),
        ("/relative/hook", "callback_url must be an absolute https URL."),
        ("https:///nohost", "callback_url must be an absolute https URL."),
        ("https://user@8.8.8.8/", "callback_url may not carry a user name or password."),
        ("https://:pw@8.8.8.8/", "callback_url may not carry a user name or password."),
    ],
)
def test_malformed_callback_urls_are_refused_with_the_reason(
    signing: Any, value: Any, message: str
) -> None:
    assert refused(value) == message


def test_a_url_of_exactly_2000_characters_is_allowed(signing: Any) -> None:
    value = "https://8.8.8.8/" + "a" * (2000 - len("https://8.8.8.8/"))
    assert clean_callback_url(value) == value


def test_plain_http_callbacks_only_in_development(signing: Any) -> None:
    signing.DEBUG = True
    assert clean_callback_url("http://8.8.8.8/hook") == "http://8.8.8.8/hook"
    assert refused("ftp://8.8.8.8/") == "callback_url must be an absolute https or http URL."


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "[::1]", "[fe80::1]", "0.0.0.0"],
)
def test_callbacks_to_private_or_loopback_addresses_are_refused(signing: Any, host: str) -> None:
    message = refused(f"https://{host}/hook")
    bare = host.strip("[]")
    assert message == (
        f"callback_url is refused: {bare} resolves to {bare}, a loopback, private or reserved "
        "address"
    )


def test_private_addresses_are_allowed_when_configured(signing: Any) -> None:
    signing.COLLECTIONS_CALLBACK_ALLOW_PRIVATE = True
    assert clean_callback_url("https://127.0.0.1:8000/hook") == "https://127.0.0.1:8000/hook"
    assert public_addresses("127.0.0.1", 80) == ["127.0.0.1"]


def test_a_host_that_does_not_resolve_is_refused(signing: Any) -> None:
    assert refused("https://a..b/hook") == "callback_url is refused: a..b does not resolve"
    with pytest.raises(RefusedAddress, match="does not resolve"):
        public_addresses("a..b", 443)


def test_public_addresses_lists_each_address_once(signing: Any) -> None:
    assert public_addresses("8.8.8.8", 443) == ["8.8.8.8"]
    assert public_addresses("2001:4860:4860::8888", 443) == ["2001:4860:4860::8888"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("10.0.0.1", False),
        ("224.0.0.1", False),  # multicast
        ("ff0e::1", False),  # global-scope multicast
        ("::ffff:10.0.0.1", False),  # IPv4-mapped private
        ("::ffff:8.8.8.8", True),
        ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
        ("2002:0808:0808::1", True),  # 6to4 of 8.8.8.8
        ("64:ff9b::10.0.0.1", False),  # NAT64 of a private address
        ("64:ff9b::a00:1", False),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("fe80::1%eth0", False),  # a zone is dropped before checking
    ],
)
def test_which_addresses_count_as_public(address: str, public: bool) -> None:
    assert validation._is_public(address) is public
