"""Pages of collection requests: newest first, by opaque cursor."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

from .errors import ApiError

MAX_PAGE_SIZE = 500


class NewestFirst(CursorPagination):
    """Newest first; a page has `next` and `previous` links (null at the ends). Cursors stay
    valid while new requests arrive; an invalid cursor is a 404 (DRF's convention)."""

    ordering = "-created"
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE
    invalid_cursor_message = "Invalid cursor: follow the `next` or `previous` link as given."

    def get_page_size(self, request: Request) -> int:
        """settings.COLLECTIONS_API_PAGE_SIZE, or `page_size` from 1 to 500 (else 400)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return settings.COLLECTIONS_API_PAGE_SIZE
        if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
            raise ApiError(
                400,
                "invalid_param",
                f"page_size must be a whole number from 1 to {MAX_PAGE_SIZE}.",
                field="page_size",
            )
        return int(raw)

    def decode_cursor(self, request: Request) -> Cursor | None:
        """DRF's decoding, plus a check of the position: a hand-made cursor whose position
        is no time is as invalid as any other (404), not a database error."""
        cursor = super().decode_cursor(request)
        if cursor and cursor.position is not None and not _aware_datetime(str(cursor.position)):
            raise NotFound(self.invalid_cursor_message)
        return cursor

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=MAX_PAGE_SIZE)
        return parameters


def _aware_datetime(text: str) -> bool:
    try:
        parsed = parse_datetime(text)
    except ValueError:  # well formed but impossible, e.g. month 99
        return False
    return parsed is not None and parsed.tzinfo is not None
