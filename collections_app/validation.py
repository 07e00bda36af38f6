"""Input rules shared by the service, the admin form, the API and the CLI.

Errors are ValidationErrors keyed by field; each message names the field, and each carries
UtilityAPI's own error type as its code (`required_param_missing` or `invalid_param`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from typing import Any
from urllib.parse import SplitResult, urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

from .models import (
    CALLBACK_URL_MAX_LENGTH,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    MAX_MONTHS,
    MIN_MONTHS,
    UID_MAX_LENGTH,
)

# Unicode categories no uid may contain: controls, format characters (bidirectional overrides,
# zero-width joiners, BOM), surrogates, private use, unassigned code points, and every space
# and line or paragraph separator. What is left shows as what it is.
UID_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def invalid(field: str, message: str, code: str = "invalid_param") -> ValidationError:
    return ValidationError({field: ValidationError(message, code=code)})


def clean_meters(value: Any) -> list[str]:
    """A non-empty list of distinct, non-blank meter uid strings (as UtilityAPI takes them).

    Every problem with the uids is reported at once, one message each, naming positions as
    people count ("the 3rd meter")."""
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
    problems = _uid_problems(value)
    if problems:
        raise ValidationError(
            {"meters": [ValidationError(p, code="invalid_param") for p in problems]}
        )
    return list(value)


def _uid_problems(uids: list[Any]) -> list[str]:
    """One message per bad or repeated uid, in list order."""
    problems = []
    first_seen: dict[str, int] = {}
    for position, uid in enumerate(uids, start=1):
        problem = _uid_problem(uid, position)
        if problem is None and uid in first_seen:
            problem = (
                f"meters lists {uid} more than once (the {ordinal(first_seen[uid])} "
                f"and {ordinal(position)} meters)."
            )
        if problem:
            problems.append(problem)
        elif isinstance(uid, str):
            first_seen[uid] = position
    return problems


def _uid_problem(uid: Any, position: int) -> str | None:
    where = f"meters: the {ordinal(position)} meter"
    if not isinstance(uid, str):
        return f"{where} must be a string uid, not {type(uid).__name__}."
    if not uid.strip():
        return f"{where} is blank."
    if len(uid) > UID_MAX_LENGTH or not uid_characters_ok(uid):
        return (
            f"{where} ({uid[:UID_MAX_LENGTH]!r}) is not a meter uid: at most {UID_MAX_LENGTH} "
            "characters, no spaces and no control, format, private-use or unassigned characters."
        )
    return None


def uid_characters_ok(uid: str) -> bool:
    """No character of UID_REFUSED_CATEGORIES."""
    return not any(unicodedata.category(c) in UID_REFUSED_CATEGORIES for c in uid)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st: positions as people count them."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def clean_duration(value: Any) -> int | None:
    """None (the account's default) or a whole number of months from 1 to 36."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(
            "collection_duration",
            f"collection_duration must be a whole number of months from {MIN_MONTHS} to "
            f"{MAX_MONTHS}, or null.",
        )
    if not MIN_MONTHS <= value <= MAX_MONTHS:
        raise invalid(
            "collection_duration",
            f"collection_duration must be from {MIN_MONTHS} to {MAX_MONTHS} months, not {value}.",
        )
    return value


def clean_idempotency_key(key: Any) -> str:
    """An Idempotency-Key: "" (none) or up to IDEMPOTENCY_KEY_MAX_LENGTH printable ASCII
    characters."""
    if not isinstance(key, str) or not re.fullmatch(r"[\x20-\x7e]*", key):
        raise invalid(
            "idempotency_key", "idempotency_key may hold printable ASCII characters only."
        )
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise invalid(
            "idempotency_key",
            f"idempotency_key is longer than {IDEMPOTENCY_KEY_MAX_LENGTH} characters.",
        )
    return key


def parse_meter_text(text: str) -> list[str]:
    """Meter uids typed by a person: one per line or comma separated."""
    return [part.strip() for part in re.split(r"[,\n\r]+", text or "") if part.strip()]


# --- callback URLs (docs/security.md, server-side request forgery) --------------------------


class RefusedAddress(ValueError):
    """A callback host that does not resolve, or resolves to an address callbacks may not reach."""


def clean_callback_url(value: Any) -> str | None:
    """None (no callback; an empty string is refused), or an absolute https URL (http too
    with DEBUG) without userinfo, whose host resolves only to public addresses (any, with
    COLLECTIONS_CALLBACK_ALLOW_PRIVATE). Refused while COLLECTIONS_CALLBACK_SECRET is unset:
    the POSTs could not be signed."""
    if value is None:
        return None
    if not settings.COLLECTIONS_CALLBACK_SECRET:
        raise invalid(
            "callback_url",
            "callback_url cannot be used here: the service has no COLLECTIONS_CALLBACK_SECRET "
            "to sign callbacks with.",
        )
    parts = _callback_parts(value)
    try:
        public_addresses(parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme])
    except RefusedAddress as err:
        raise invalid("callback_url", f"callback_url is refused: {err}") from None
    return value


DEFAULT_PORTS = {"https": 443, "http": 80}  # the port a callback URL without one uses


def _callback_parts(value: Any) -> SplitResult:
    """The URL's parts, once its form is checked (scheme, host, no userinfo, length)."""
    schemes = ("https", "http") if settings.DEBUG else ("https",)
    if not isinstance(value, str) or not value or len(value) > CALLBACK_URL_MAX_LENGTH:
        raise invalid(
            "callback_url",
            f"callback_url must be a URL of 1 to {CALLBACK_URL_MAX_LENGTH} characters, or null.",
        )
    if not re.fullmatch(r"[!-~]+", value):
        raise invalid("callback_url", "callback_url may hold printable ASCII characters only.")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise invalid("callback_url", "callback_url is not a valid URL.") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise invalid(
            "callback_url", f"callback_url must be an absolute {' or '.join(schemes)} URL."
        )
    if parts.username is not None or parts.password is not None:
        raise invalid("callback_url", "callback_url may not carry a user name or password.")
    return parts


def public_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, each one allowed for callbacks; raises RefusedAddress
    when it does not resolve or any address is loopback, private, link-local, multicast,
    reserved or otherwise not global (unless COLLECTIONS_CALLBACK_ALLOW_PRIVATE). Checked when
    the URL is given and again before every POST (DNS may change in between)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RefusedAddress(f"{host} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE:
        for address in addresses:
            if not _is_public(address):
                raise RefusedAddress(
                    f"{host} resolves to {address}, a loopback, private or reserved address"
                )
    return addresses


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses reached through a NAT64 gateway


def _is_public(address: str) -> bool:
    """Global unicast, and so is any IPv4 address it carries (mapped, 6to4, NAT64)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) dropped
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not _is_public(str(embedded)):
            return False
    return ip.is_global and not ip.is_multicast
