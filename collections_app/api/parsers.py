"""The API's only parser: JSON, bounded in size, never a 500 on any input."""

from __future__ import annotations

import json
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser

from .errors import RequestTooLarge


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class BoundedJSONParser(BaseParser):
    """JSON bodies up to settings.COLLECTIONS_API_MAX_BODY_BYTES (413 beyond). Malformed,
    non-UTF-8, NaN/Infinity or absurdly nested JSON is a 400 `invalid_json`.

    Not a JSONParser subclass: DRF reads the whole body into memory before calling one."""

    media_type = "application/json"

    def parse(
        self, stream: IO[bytes], media_type: str | None = None, parser_context: Any = None
    ) -> Any:
        limit = settings.COLLECTIONS_API_MAX_BODY_BYTES
        request = (parser_context or {}).get("request")
        if request is not None and _declared_length(request.META) > limit:
            raise RequestTooLarge(limit)  # refused before reading a byte
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise RequestTooLarge(limit)
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except RecursionError:
            raise ParseError("The body is not valid JSON: nested too deeply.") from None
        except ValueError as err:  # includes JSONDecodeError and UnicodeDecodeError
            raise ParseError(f"The body is not valid JSON: {err}") from None


def _declared_length(meta: dict[str, Any]) -> int:
    try:
        return int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0
