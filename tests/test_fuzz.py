"""Property-based tests (hypothesis): whatever UtilityAPI answers, and whatever people type.

Answers: any status 100-599, any headers (Retry-After in every shape), any body bytes go
through client.parse_answer and then outcomes.record_outcome on a claimed row: a defined
status, a storable error, nothing raised. Input: the service, the admin form, the JSON API and
the CLI against an independent statement of the rules: invalid input names the field and
stores nothing; valid input is stored as given.
"""

from __future__ import annotations

import email.utils
import io
import json
import math
import re
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from collections_app import client, services
from collections_app.client import Accepted
from collections_app.exceptions import (
    AccountError,
    BadResponse,
    PermanentError,
    Throttled,
    TransientError,
    UtilityAPIError,
)
from collections_app.forms import CollectionRequestForm
from collections_app.models import CollectionRequest, Status
from collections_app.services import leases, outcomes

pytestmark = pytest.mark.django_db

FUZZ = hsettings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_METERS = 5  # COLLECTIONS_MAX_METERS_PER_REQUEST for these tests, so lists cross it


# --- UtilityAPI's answers -----------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
vendor_objects = st.fixed_dictionaries(
    {},
    optional={
        "success": st.just(True) | json_values,
        "meters": st.lists(st.sampled_from(["m-1", "m-2", "zz", ""]), max_size=4) | json_values,
        "collection_duration": st.integers(-1, 40) | json_values,
        "error": st.text(max_size=80) | json_values,
        "error_description": st.text(max_size=400) | json_values,
    },
)


def encoded(value: Any) -> bytes:
    """JSON as a vendor might send it: sometimes raw UTF-8, lone surrogates and all."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=600),
    json_values.map(encoded),
    vendor_objects.map(encoded),
    vendor_objects.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=300).map(lambda t: f"<html><h1>{t}</h1></html>".encode("utf-8", "replace")),
)
http_dates = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda dt: email.utils.format_datetime(dt.replace(tzinfo=UTC), usegmt=True)
)
retry_afters = st.one_of(
    st.integers(-(10**6), 10**12).map(str),
    st.floats().map(repr),
    http_dates,
    st.text(max_size=40),
    st.sampled_from(
        ["", " 5 ", "-1", "1e309", "NaN", "Infinity", "1_000", "0x10", "\u0661\u0662",
         "Sun, 06 Nov 1994 08:49:37", "Sunday, 06-Nov-94 08:49:37 GMT",
         "Sun Nov  6 08:49:37 1994", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 32 Foo 2020"]
    ),
)  # fmt: skip
header_sets = st.fixed_dictionaries(
    {},
    optional={
        "Retry-After": retry_afters,
        "Content-Type": st.sampled_from(["application/json", "text/html", "", "x/y; a=b"]),
        "X-Anything": st.text(max_size=20),
    },
)
statuses = st.integers(100, 599) | st.sampled_from([200, 400, 401, 402, 404, 429, 500, 503, 504])


def response(status: int, headers: dict[str, str], body: bytes) -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    answer.headers = CaseInsensitiveDict(headers)
    answer._content = body
    answer.url = "https://utilityapi.example/api/v2/meters/historical-collection"
    return answer


def outcome_of(status: int, headers: dict[str, str], body: bytes) -> Accepted | UtilityAPIError:
    try:
        return client.parse_answer(response(status, headers, body))
    except UtilityAPIError as err:
        return err


def storable(text: str) -> bool:
    """PostgreSQL keeps it in a text column: no NUL, valid UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def expected_type(status: int) -> type[UtilityAPIError]:
    """The documented response handling, and the client's reading of the codes it does not list."""
    if 200 <= status < 300:
        return BadResponse  # a 2xx that is not the success object
    if status == 429:
        return Throttled
    if status in (401, 402):
        return AccountError
    if status in (408, 502, 503, 504) or status > 500:
        return TransientError
    return PermanentError  # 400, 404, 500, 1xx, 3xx, other 4xx


@FUZZ
@given(status=statuses, headers=header_sets, body=bodies)
def test_any_answer_maps_to_accepted_or_a_typed_error(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    outcome = outcome_of(status, headers, body)
    if isinstance(outcome, Accepted):
        assert 200 <= status < 300
        assert all(isinstance(m, str) for m in outcome.meters)
        assert outcome.collection_duration is None or isinstance(outcome.collection_duration, int)
        return
    assert type(outcome) is expected_type(status), (status, outcome)
    assert outcome.status_code == status
    assert outcome.error.strip() and len(outcome.error) <= 64 and storable(outcome.error)
    assert outcome.description.strip() and storable(outcome.description)
    assert len(outcome.description) <= client.DESCRIPTION_MAX
    if isinstance(outcome, Throttled):
        assert outcome.retry_after is not None and math.isfinite(outcome.retry_after)
        assert 0 <= outcome.retry_after <= client.MAX_RETRY_AFTER
    assert str(outcome) and repr(outcome)


@FUZZ
@given(status=statuses, headers=header_sets, body=bodies)
def test_any_answer_is_recorded_as_a_defined_status(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    CollectionRequest.objects.all().delete()
    request = services.request_collection(["m-1", "m-2"], 12)
    batch = leases.claim(request.pk, "fuzz-task")
    assert [r.pk for r in batch] == [request.pk]
    outcome = outcome_of(status, headers, body)
    call = outcomes.Call(uuid.uuid4(), timezone.now(), 5, "fuzz-task")
    outcomes.record_outcome(batch, outcome, call)

    row = CollectionRequest.objects.get(pk=request.pk)
    attempt = row.http_attempts.get()
    assert row.status in Status.values and row.lease_token is None
    assert attempt.status_code == (200 if isinstance(outcome, Accepted) else status)
    if row.status == Status.FAILED:
        assert row.error and row.error_description and row.next_attempt_at is None
    elif row.status == Status.SUBMITTED:
        assert isinstance(outcome, TransientError) and row.error and row.next_attempt_at
    else:
        assert isinstance(outcome, Accepted)
        accepted, ignored = set(row.accepted_meters), set(row.ignored_meters)
        assert accepted and accepted | ignored == {"m-1", "m-2"} and not accepted & ignored


# --- input: the service, the admin form, the API, the CLI -----------------------------------------

odd_characters = st.sampled_from(
    [" ", "\t", "\n", "\r", "\x00", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u3000",
     "\ud800", ",", "-", "é", "\u202e", "\u200b"]
)  # fmt: skip
uids = st.one_of(
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=66),
    st.text(max_size=70),
    st.lists(st.one_of(st.characters(), odd_characters), max_size=8).map("".join),
)
meter_values = st.one_of(
    st.none(),
    st.just([]),
    st.text(max_size=10),
    st.integers(),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.lists(uids, min_size=1, max_size=MAX_METERS + 2),
    st.lists(uids, min_size=1, max_size=3).map(lambda ms: ms + ms[:1]),  # a repeated uid
    st.lists(st.one_of(uids, st.integers(), st.none(), st.booleans()), max_size=4),
)
durations = st.one_of(
    st.none(), st.integers(-3, 40), st.booleans(), st.floats(0, 40), st.text(max_size=3)
)


def uid_ok(uid: Any) -> bool:
    """The rule, restated: a non-blank string of at most 64 characters with no whitespace
    (anything str.isspace() says), and nothing invisible or meaningless on screen: no control,
    format (bidi, zero-width), surrogate, private-use, unassigned or separator character."""
    return (
        isinstance(uid, str)
        and 0 < len(uid) <= 64
        and not any(
            c.isspace() or unicodedata.category(c)[0] in "CZ" or ord(c) < 0x20 or c == "\x7f"
            for c in uid
        )
    )


def meters_ok(value: Any) -> bool:
    return (
        isinstance(value, list)
        and 0 < len(value) <= MAX_METERS
        and all(uid_ok(u) for u in value)
        and len(set(value)) == len(value)
    )


def duration_ok(value: Any) -> bool:
    return value is None or (type(value) is int and 1 <= value <= 36)


def blamed_field(meters: Any, duration: Any) -> str | None:
    if not meters_ok(meters):
        return "meters"
    return None if duration_ok(duration) else "collection_duration"


@pytest.fixture
def small_limit(settings: Any) -> None:
    settings.COLLECTIONS_MAX_METERS_PER_REQUEST = MAX_METERS


@FUZZ
@given(meters=meter_values, duration=durations)
def test_request_collection_stores_valid_input_and_names_the_bad_field(
    small_limit: None, meters: Any, duration: Any
) -> None:
    before = CollectionRequest.objects.count()
    field = blamed_field(meters, duration)
    if field is None:
        stored = services.request_collection(meters, duration)
        fresh = CollectionRequest.objects.get(pk=stored.pk)
        assert (fresh.meters, fresh.collection_duration) == (meters, duration)
        assert CollectionRequest.objects.count() == before + 1
        return
    with pytest.raises(ValidationError) as caught:
        services.request_collection(meters, duration)
    assert list(caught.value.error_dict) == [field]
    assert all(field in message for message in caught.value.message_dict[field])
    assert CollectionRequest.objects.count() == before


def split_meter_text(text: str) -> list[str]:
    """How the form reads a person's text: one uid per line or comma separated."""
    return [part.strip() for part in re.split(r"[,\r\n]+", text) if part.strip()]


def django_duration(text: str) -> Any:
    """The duration field's own parsing (Django's IntegerField, 1-36, optional)."""
    from django import forms

    try:
        return forms.IntegerField(required=False, min_value=1, max_value=36).clean(text)
    except ValidationError:
        return "invalid"


typed_uids = uids.filter(lambda u: "\ud800" not in u)  # no browser sends a lone surrogate
meter_texts = st.one_of(
    st.lists(typed_uids, max_size=MAX_METERS + 2).map(", ".join),
    st.lists(typed_uids, max_size=4).map("\n".join),
    st.text(max_size=60),
)
duration_texts = st.one_of(st.just(""), st.integers(-3, 40).map(str), st.text(max_size=4))


@FUZZ
@given(text=meter_texts, duration=duration_texts)
def test_admin_form_and_add_view_agree_with_the_rules(
    small_limit: None, admin_client: Any, text: str, duration: str
) -> None:
    form = CollectionRequestForm({"meters": text, "collection_duration": duration})
    meters, months = split_meter_text(text), django_duration(duration)
    meters_valid = "\x00" not in text and meters_ok(meters)  # Django refuses NUL in any field
    valid = meters_valid and months != "invalid"
    assert form.is_valid() == valid, (form.errors, meters, months)
    before = CollectionRequest.objects.count()
    response = admin_client.post(
        reverse("admin:collections_app_collectionrequest_add"),
        {"meters": text, "collection_duration": duration},
    )
    if valid:
        assert form.cleaned_data["meters"] == meters
        assert response.status_code == 302
        stored = CollectionRequest.objects.order_by("-created").first()
        assert stored is not None and stored.meters == meters
        assert (stored.collection_duration, stored.source) == (months, "admin")
        assert CollectionRequest.objects.count() == before + 1
    else:
        assert ("meters" in form.errors) == (not meters_valid)
        assert set(form.errors) <= {"meters", "collection_duration"}
        assert response.status_code == 200 and b"errorlist" in response.content
        assert CollectionRequest.objects.count() == before


@pytest.fixture
def api_token(admin_user: Any) -> str:
    tokens = pytest.importorskip("collections_app.services.tokens")
    return str(tokens.issue(admin_user, "fuzz")[1])


json_meter_values = st.one_of(
    st.none(),
    st.just([]),
    st.text(max_size=10),
    st.integers(),
    st.lists(typed_uids, min_size=1, max_size=MAX_METERS + 2),
    st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=3),
)
json_durations = st.one_of(st.none(), st.integers(-3, 40), st.booleans(), st.floats(0, 40))


@FUZZ
@given(meters=json_meter_values, duration=json_durations)
def test_api_stores_valid_input_and_names_the_bad_field(
    small_limit: None, client: Any, api_token: str, meters: Any, duration: Any
) -> None:
    before = CollectionRequest.objects.count()
    response = client.post(
        "/api/collections/",
        json.dumps({"meters": meters, "collection_duration": duration}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {api_token}"},
    )
    body = response.json()
    field = blamed_field(meters, duration)
    if field is None:
        assert response.status_code == 202, body
        assert (body["meters"], body["collection_duration"]) == (meters, duration)
        assert CollectionRequest.objects.count() == before + 1
    else:
        assert response.status_code == 400, body
        assert body["error"] in {"invalid_param", "required_param_missing"}
        assert body["field"] == field and field in body["error_description"]
        assert CollectionRequest.objects.count() == before


cli_meters = st.lists(uids.filter(lambda u: "\x00" not in u), max_size=MAX_METERS + 1)
cli_durations = st.one_of(st.none(), st.integers(-3, 40).map(str), st.text(max_size=3))


def argparse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@FUZZ
@given(meters=cli_meters, duration=cli_durations)
def test_cli_stores_valid_arguments_and_names_the_bad_one(
    small_limit: None, meters: list[str], duration: str | None
) -> None:
    pytest.importorskip("collections_app.management.commands.request_collection")
    args = ([] if duration is None else ["--duration", duration]) + ["--", *meters]
    months = None if duration is None else argparse_int(duration)
    before, out = CollectionRequest.objects.count(), io.StringIO()
    if duration is not None and months is None:
        expected: str | None = "--duration"
    elif not meters:
        expected = "METER"
    else:
        expected = blamed_field(meters, months)
    if expected is None:
        call_command("request_collection", *args, stdout=out)
        printed = json.loads(out.getvalue())
        assert (printed["meters"], printed["collection_duration"]) == (meters, months)
        assert CollectionRequest.objects.get(pk=printed["id"]).source == "cli"
        assert CollectionRequest.objects.count() == before + 1
        return
    with pytest.raises(CommandError) as caught:
        call_command("request_collection", *args, stdout=out)
    assert expected in str(caught.value)
    assert CollectionRequest.objects.count() == before
