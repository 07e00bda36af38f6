"""API tokens: issued once, stored only as a SHA-256 digest and a short prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from django.utils import timezone

from ..models import ApiToken

# Marks a collections-service token in logs and secret scanners (not itself a secret).
TOKEN_PREFIX = "cs_"  # noqa: S105
PREFIX_LENGTH = 12  # ApiToken.prefix's max_length
LAST_USED_GRANULARITY = timedelta(minutes=1)  # at most one UPDATE a minute per token


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def issue(user: Any, name: str = "") -> tuple[ApiToken, str]:
    """Store a new token for `user`; returns the row and the token itself, which is never
    stored and cannot be shown again."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, prefix=raw[:PREFIX_LENGTH], digest=digest(raw)
    )
    return token, raw


def authenticate(raw: str) -> ApiToken | None:
    """The live token whose digest matches `raw` (its user active, the token not revoked),
    or None. Notes when it was last used."""
    wanted = digest(raw)
    token = ApiToken.objects.select_related("user").filter(digest=wanted).first()
    if token is None or not hmac.compare_digest(token.digest, wanted):
        return None
    if token.revoked_at is not None or not token.user.is_active:
        return None
    _touch(token)
    return token


def _touch(token: ApiToken) -> None:
    """Record last_used_at cheaply: one UPDATE, and only when the stored value is stale."""
    now = timezone.now()
    if token.last_used_at and now - token.last_used_at < LAST_USED_GRANULARITY:
        return
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now


def revoke(tokens: Any) -> int:
    """Revoke live tokens (a queryset); returns how many. Revoked tokens are kept, for audit."""
    return int(tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now()))
