"""The JSON API: trigger a collection, read one, list them (docs/api.md)."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors, services
from ..models import IDEMPOTENCY_KEY_MAX_LENGTH, CollectionRequest, Source, Status
from ..validation import clean_idempotency_key
from .auth import API_AUTHENTICATION
from .errors import ApiError
from .pagination import NewestFirst
from .parsers import BoundedJSONParser
from .permissions import CollectionRequestPermissions
from .serializers import (
    INPUT_FIELDS,
    CollectionRequestInputSerializer,
    CollectionRequestSerializer,
    ErrorSerializer,
)
from .throttles import PostRateThrottle

ERROR_MEANINGS = {
    400: "Bad input (invalid_param, required_param_missing, invalid_json); nothing stored.",
    401: "No, bad or revoked API token (not_authenticated, invalid_token).",
    403: "Missing permission, or a session write without a CSRF token (permission_denied).",
    404: "No such request, or an invalid page cursor (not_found).",
    413: "Body larger than COLLECTIONS_API_MAX_BODY_BYTES (request_too_large).",
    415: "Body not sent as application/json (unsupported_media_type).",
    422: "Idempotency-Key reused with other meters, duration or callback_url "
    "(idempotency_key_reused).",
    429: "More POSTs than COLLECTIONS_API_POST_RATE for this token; see Retry-After "
    "(rate_limited).",
}
IDEMPOTENCY_HEADER = "Idempotency-Key"


def answer_header(
    name: str, kind: Any, status: int, description: str, required: bool = True, **extra: Any
) -> OpenApiParameter:
    """A header of the answer with `status`, for the OpenAPI schema."""
    return OpenApiParameter(
        name,
        kind,
        OpenApiParameter.HEADER,
        description=description,
        response=[status],
        required=required,
        **extra,
    )


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: OpenApiResponse(ErrorSerializer, ERROR_MEANINGS[code]) for code in codes}


class ApiView(generics.GenericAPIView):
    queryset = selectors.with_progress(CollectionRequest.objects.all())
    serializer_class = CollectionRequestSerializer
    authentication_classes = API_AUTHENTICATION
    permission_classes = [CollectionRequestPermissions]
    parser_classes = [BoundedJSONParser]
    throttle_classes = [PostRateThrottle]


class CollectionRequestList(ApiView, generics.ListAPIView):
    pagination_class = NewestFirst

    @extend_schema(
        summary="List collection requests, newest first",
        parameters=[
            OpenApiParameter("status", enum=Status.values, description="Only this status."),
        ],
        responses={200: CollectionRequestSerializer(many=True), **errors(400, 401, 403, 404)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        if "status" not in self.request.query_params:
            return queryset
        status = self.request.query_params["status"]
        if status not in Status.values:
            raise ApiError(
                400,
                "invalid_param",
                f"status must be one of {', '.join(Status.values)}, not {status[:40]!r}.",
                field="status",
            )
        return queryset.filter(status=status)

    @extend_schema(
        summary="Trigger a historical collection",
        description="Stores the request and hands it to the workers; poll the `Location` URL "
        "for the outcome. A retry with the same Idempotency-Key (same user, same body) "
        "answers 202 with the first request and `Idempotent-Replayed: true`.",
        request=CollectionRequestInputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH, "pattern": "^[ -~]*$"},
                OpenApiParameter.HEADER,
                description="Printable ASCII, unique per request (e.g. a UUID); empty means none.",
            ),
            answer_header("Location", OpenApiTypes.URI, 202, "The request's URL."),
            answer_header(
                "Idempotent-Replayed",
                OpenApiTypes.STR,
                202,
                "Present when the Idempotency-Key matched an earlier request.",
                required=False,
                enum=["true"],
            ),
            answer_header(
                "Retry-After", OpenApiTypes.INT, 429, "Seconds until this token may POST again."
            ),
        ],
        responses={202: CollectionRequestSerializer, **errors(400, 401, 403, 413, 415, 422, 429)},
    )
    def post(self, request: Request) -> Response:
        meters, duration, callback_url = body_fields(request.data)
        key = clean_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER, ""))
        started = timezone.now()
        created = trigger(request.user, meters, duration, callback_url, key)
        url = reverse("collections_api:collection-detail", kwargs={"id": created.pk})
        headers = {"Location": request.build_absolute_uri(url)}
        if key and created.created < started:
            headers["Idempotent-Replayed"] = "true"
        return Response(self.get_serializer(created).data, status=202, headers=headers)


def body_fields(data: Any) -> tuple[Any, Any, Any]:
    """meters, collection_duration and callback_url from a JSON object with no other fields."""
    if not isinstance(data, dict):
        raise ApiError(
            400,
            "invalid_json",
            'The body must be a JSON object: {"meters": [...], "collection_duration": 12}.',
        )
    unknown = sorted(set(data) - INPUT_FIELDS)
    if unknown:
        raise ApiError(
            400,
            "invalid_param",
            f"Unknown field {unknown[0][:64]!r}: only meters, collection_duration and "
            "callback_url are taken.",
            field=unknown[0][:64],
        )
    return data.get("meters"), data.get("collection_duration"), data.get("callback_url")


def trigger(
    user: Any, meters: Any, duration: Any, callback_url: Any, key: str
) -> CollectionRequest:
    """request_collection for an API caller; a reused Idempotency-Key is a 422."""
    try:
        return services.request_collection(
            meters,
            duration,
            source=Source.API,
            requested_by=user,
            callback_url=callback_url,
            idempotency_key=key,
        )
    except ValidationError as err:
        if _key_reused(err, user, key):
            raise ApiError(
                422,
                "idempotency_key_reused",
                f"This {IDEMPOTENCY_HEADER} was already used for a request with other meters, "
                "collection_duration or callback_url. Use a new key for a new request.",
                field="idempotency_key",
            ) from err
        raise


def _key_reused(err: ValidationError, user: Any, key: str) -> bool:
    """The service refused the key (already checked well formed): it is taken."""
    if "idempotency_key" not in getattr(err, "error_dict", {}):
        return False
    return CollectionRequest.objects.filter(requested_by=user, idempotency_key=key).exists()


class CollectionRequestDetail(ApiView, generics.RetrieveAPIView):
    lookup_url_kwarg = "id"

    @extend_schema(
        summary="One collection request",
        parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses={200: CollectionRequestSerializer, **errors(401, 403, 404)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_object(self) -> CollectionRequest:
        try:
            pk = uuid.UUID(self.kwargs["id"])
        except ValueError:
            raise ApiError(404, "not_found", "No collection request has this id.") from None
        request = self.get_queryset().filter(pk=pk).first()
        if request is None:
            raise ApiError(404, "not_found", "No collection request has this id.")
        return request


def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Any other /api/ URL: a 404 in the error shape, not Django's HTML page."""
    description = f"No API endpoint at {request.path[:200]}."
    if not request.path.endswith("/"):
        description += " (API URLs end with a slash.)"
    return JsonResponse({"error": "not_found", "error_description": description}, status=404)
