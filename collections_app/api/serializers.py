"""The JSON shape of a collection request (the contract's field names), for the API and CLI.

Input is validated by collections_app.validation, not here: the input serializer below only
documents the body in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .. import selectors
from ..models import (
    CALLBACK_URL_MAX_LENGTH,
    MAX_MONTHS,
    MIN_MONTHS,
    UID_MAX_LENGTH,
    CollectionRequest,
)
from ..validation import uid_characters_ok

FIELDS = [*CollectionRequest.PUBLIC_FIELDS, "meters_progress"]
INPUT_FIELDS = {"meters", "collection_duration", "callback_url"}
# Planes whose code points are all refused: 4–13 are unassigned, 15–16 private use.
_REFUSED_PLANES = [(0x40000, 0xDFFFF), (0xF0000, 0x10FFFF)]


def _refused_runs() -> list[tuple[int, int]]:
    """Runs of code points validation refuses in a uid. Surrogates are left out: no pattern
    engine takes them, and no JSON text is made of them."""
    runs: list[tuple[int, int]] = []
    for code in [*range(0xD800), *range(0xE000, 0x40000), *range(0xE0000, 0xF0000)]:
        if uid_characters_ok(chr(code)):
            continue
        if runs and runs[-1][1] == code - 1:
            runs[-1] = (runs[-1][0], code)
        else:
            runs.append((code, code))
    return runs + _REFUSED_PLANES


def _uid_pattern() -> str:
    """validation's uid rule as a pattern that means the same in JSON Schema (ECMA-262) and in
    Python: BMP code points as \\uXXXX escapes, astral ones as themselves (no escape is
    common to both). The length is in the pattern: a separate maxLength makes schema tools
    rewrite it, spelling astral characters as Python's \\U escapes."""

    def char(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    runs = (char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in _refused_runs())
    return f"^[^{''.join(runs)}]{{1,{UID_MAX_LENGTH}}}$"


UID_PATTERN = _uid_pattern()


def _uids(help_text: str) -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(), read_only=True, help_text=help_text)


class MeterProgressSerializer(serializers.Serializer):
    """One accepted meter's collection, as UtilityAPI reports it (unknown values kept)."""

    meter = serializers.CharField(help_text="The meter uid.")
    stage = serializers.CharField(
        allow_null=True,
        help_text="Suffix of the latest meter_historical_collection_* event: started, delayed, "
        "retrying, progress, finished_successful, finished_errored (or a newer one); null "
        "before the first.",
    )
    status = serializers.CharField(
        allow_null=True, help_text="The meter's status from GET /meters (pending, updated, …)."
    )
    status_message = serializers.CharField(allow_null=True)
    updated = serializers.DateTimeField(allow_null=True, help_text="When either last changed.")


class CollectionRequestSerializer(serializers.ModelSerializer):
    """A collection request as the API returns it and `manage.py request_collection` prints it."""

    meters = _uids("Meter uids, as asked.")
    accepted_meters = _uids("Meters UtilityAPI accepted (its response's `meters`).")
    ignored_meters = _uids("Asked for but silently dropped by UtilityAPI.")
    meters_progress = serializers.SerializerMethodField()

    @extend_schema_field(MeterProgressSerializer(many=True))
    def get_meters_progress(self, request: CollectionRequest) -> list[dict[str, Any]]:
        return list(MeterProgressSerializer(selectors.meters_progress(request), many=True).data)

    class Meta:
        model = CollectionRequest
        fields = FIELDS
        read_only_fields = FIELDS


def as_json(request: CollectionRequest) -> dict[str, Any]:
    """The request as plain JSON-ready data (str id, ISO 8601 times)."""
    return dict(CollectionRequestSerializer(request).data)


class CollectionRequestInputSerializer(serializers.Serializer):
    """POST /api/collections/ body (documentation only; collections_app.validation rules)."""

    meters = serializers.ListField(
        child=serializers.RegexField(UID_PATTERN),
        min_length=1,
        help_text="Distinct meter uids (strings). At most COLLECTIONS_MAX_METERS_PER_REQUEST.",
    )
    collection_duration = serializers.IntegerField(
        min_value=MIN_MONTHS,
        max_value=MAX_MONTHS,
        allow_null=True,
        required=False,
        help_text=f"Months to collect, {MIN_MONTHS}–{MAX_MONTHS}; null or absent means the "
        "account's default.",
    )
    callback_url = serializers.URLField(
        max_length=CALLBACK_URL_MAX_LENGTH,
        allow_null=True,
        required=False,
        help_text="Receives a signed POST of the request when it reaches pending or failed and "
        "when its collection ends (docs/api.md, Callbacks). https, public addresses only.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read when the schema is built, not at import, so the setting's current value shows.
        meters = self.fields["meters"]
        assert isinstance(meters, serializers.ListField)
        meters.max_length = settings.COLLECTIONS_MAX_METERS_PER_REQUEST


class ErrorSerializer(serializers.Serializer):
    """Every error answer (docs/api.md lists the types)."""

    error = serializers.CharField(help_text="Error type, e.g. invalid_param.")
    error_description = serializers.CharField(help_text="What went wrong, for people.")
    field = serializers.CharField(required=False, help_text="The input field to blame, if one.")


class CollectionRequestInputScheme(OpenApiSerializerExtension):
    """The body's schema as the API enforces it: distinct uids, no other fields."""

    target_class = CollectionRequestInputSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema["properties"]["meters"]["uniqueItems"] = True
        # As written here: drf-spectacular would spell astral characters \U…, unknown to ECMA-262.
        schema["properties"]["meters"]["items"]["pattern"] = UID_PATTERN
        schema["additionalProperties"] = False
        return schema
