"""The JSON shape of a collection request (SPEC field names), shared by the API and the CLI.

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
from ..models import CollectionRequest
from ..validation import UID_MAX_LENGTH

FIELDS = [*CollectionRequest.PUBLIC_FIELDS, "meters_progress"]
INPUT_FIELDS = {"meters", "collection_duration"}
# validation's uid rule (no control characters, nothing str.isspace() calls whitespace) spelt
# out, since `\s` means less in JSON Schema (ECMA-262) than in Python.
UID_PATTERN = (
    r"^[^\u0000-\u0020\u007f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
)


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
        child=serializers.RegexField(UID_PATTERN, max_length=UID_MAX_LENGTH),
        min_length=1,
        max_length=settings.COLLECTIONS_MAX_METERS_PER_REQUEST,
        help_text="Distinct meter uids (strings). At most COLLECTIONS_MAX_METERS_PER_REQUEST.",
    )
    collection_duration = serializers.IntegerField(
        min_value=1,
        max_value=36,
        allow_null=True,
        required=False,
        help_text="Months to collect, 1–36; null or absent means the account's default.",
    )


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
        schema["additionalProperties"] = False
        return schema
