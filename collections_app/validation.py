"""Input rules shared by the service, the admin form, the API and the CLI.

Errors are ValidationErrors keyed by field; each message names the field, and each carries
UtilityAPI's own error type as its code (`required_param_missing` or `invalid_param`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

UID_MAX_LENGTH = 64
# Unicode categories no uid may contain: controls, format characters (bidirectional overrides,
# zero-width joiners, BOM), surrogates, private use, unassigned code points, and every space
# and line or paragraph separator. What is left shows as what it is.
UID_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
IDEMPOTENCY_KEY_MAX = 255  # CollectionRequest.idempotency_key's max_length


def invalid(field: str, message: str, code: str = "invalid_param") -> ValidationError:
    return ValidationError({field: ValidationError(message, code=code)})


def clean_meters(value: Any) -> list[str]:
    """A non-empty list of distinct, non-blank meter uid strings (as UtilityAPI takes them)."""
    if value is None or value == "" or value == []:
        raise invalid(
            "meters",
            "meters is required: give at least one meter uid.",
            code="required_param_missing",
        )
    if not isinstance(value, list):
        raise invalid("meters", "meters must be a list of meter uid strings.")
    limit = settings.COLLECTIONS_MAX_METERS_PER_REQUEST
    if len(value) > limit:
        raise invalid("meters", f"meters has {len(value)} uids; at most {limit} are allowed.")
    for position, uid in enumerate(value, start=1):
        _check_uid(uid, position)
    repeated = sorted(uid for uid, n in Counter(value).items() if n > 1)
    if repeated:
        raise invalid("meters", f"meters lists {', '.join(repeated[:5])} more than once.")
    return list(value)


def _check_uid(uid: Any, position: int) -> None:
    where = f"meters[{position}]"
    if not isinstance(uid, str):
        raise invalid("meters", f"{where} must be a string uid, not {type(uid).__name__}.")
    if not uid.strip():
        raise invalid("meters", f"{where} is blank.")
    if len(uid) > UID_MAX_LENGTH or not uid_characters_ok(uid):
        raise invalid(
            "meters",
            f"{where} ({uid[:UID_MAX_LENGTH]!r}) is not a meter uid: at most {UID_MAX_LENGTH} "
            "characters, no spaces and no control, format, private-use or unassigned characters.",
        )


def uid_characters_ok(uid: str) -> bool:
    """No character of UID_REFUSED_CATEGORIES."""
    return not any(unicodedata.category(c) in UID_REFUSED_CATEGORIES for c in uid)


def clean_idempotency_key(key: Any) -> str:
    """An Idempotency-Key: "" (none) or up to 255 printable ASCII characters."""
    if not isinstance(key, str) or not re.fullmatch(r"[\x20-\x7e]*", key):
        raise invalid(
            "idempotency_key", "idempotency_key may hold printable ASCII characters only."
        )
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise invalid(
            "idempotency_key",
            f"idempotency_key is longer than {IDEMPOTENCY_KEY_MAX} characters.",
        )
    return key


def clean_duration(value: Any) -> int | None:
    """None (the account's default) or a whole number of months from 1 to 36."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(
            "collection_duration",
            "collection_duration must be a whole number of months from 1 to 36, or null.",
        )
    if not 1 <= value <= 36:
        raise invalid(
            "collection_duration", f"collection_duration must be from 1 to 36 months, not {value}."
        )
    return value


def parse_meter_text(text: str) -> list[str]:
    """Meter uids typed by a person: one per line or comma separated."""
    return [part.strip() for part in re.split(r"[,\n\r]+", text or "") if part.strip()]
