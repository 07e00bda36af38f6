"""Every API error answers `{"error": <type>, "error_description": <text>}` (UtilityAPI's own
shape, docs/api.md), plus `field` when one input field is to blame.

Named in settings.REST_FRAMEWORK["EXCEPTION_HANDLER"].
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

# DRF's exceptions, by the error type clients see.
ERROR_TYPES: list[tuple[type[exceptions.APIException], str]] = [
    (exceptions.ParseError, "invalid_json"),
    (exceptions.AuthenticationFailed, "invalid_token"),
    (exceptions.NotAuthenticated, "not_authenticated"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.Throttled, "rate_limited"),
    (exceptions.ValidationError, "invalid_param"),
]

VALIDATION_TYPES = {"required_param_missing", "invalid_param"}


class ApiError(exceptions.APIException):
    """An error with its status, type and description chosen by the raiser."""

    def __init__(self, status: int, error: str, description: str, field: str = "") -> None:
        super().__init__(detail=description, code=error)
        self.status_code = status
        self.error = error
        self.field = field

    @classmethod
    def from_validation(cls, err: DjangoValidationError) -> ApiError:
        """400 from the shared validation rules: every message of the first field, typed
        `required_param_missing` or else `invalid_param`."""
        by_field = err.error_dict if hasattr(err, "error_dict") else {"": err.error_list}
        field, errors = next(iter(by_field.items()))
        messages = [str(e.message % e.params if e.params else e.message) for e in errors]
        error = errors[0].code if errors[0].code in VALIDATION_TYPES else "invalid_param"
        return cls(400, error, " ".join(messages), field=field)


class RequestTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "request_too_large", f"The body is larger than {limit} bytes.")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, WWW-Authenticate, rollback), with the body in the error shape.
    Anything else (a bug) is left to Django: a 500, logged with its traceback."""
    if isinstance(exc, DjangoValidationError):
        exc = ApiError.from_validation(exc)
    elif isinstance(exc, RequestDataTooBig):  # Django refused to read it (a form body)
        exc = RequestTooLarge(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        response.data = error_body(exc)
    return response


def error_body(exc: exceptions.APIException) -> dict[str, str]:
    body = {"error": _error_type(exc), "error_description": _first_message(exc.detail)}
    if isinstance(exc, ApiError) and exc.field:
        body["field"] = exc.field
    elif isinstance(exc.detail, dict) and exc.detail:
        body["field"] = str(next(iter(exc.detail)))
    return body


def _error_type(exc: exceptions.APIException) -> str:
    if isinstance(exc, ApiError):
        return exc.error
    for cls, error in ERROR_TYPES:
        if isinstance(exc, cls):
            return error
    return str(exc.default_code)


def _first_message(detail: Any) -> str:
    while isinstance(detail, dict | list) and detail:
        detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
    return str(detail) if detail else "Error."
