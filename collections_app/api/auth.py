"""Who may call the API: a Bearer API token, or a staff member's session (CSRF enforced).

BearerTokenAuthentication is named in settings.REST_FRAMEWORK; the API's views use
API_AUTHENTICATION, which also limits session access to staff.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
    get_authorization_header,
)
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from ..services import tokens


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>`. Other schemes are left to the next authenticator; a
    Bearer header with a bad, revoked or malformed token is refused (401)."""

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid API token.") from None
        token = tokens.authenticate(raw)
        if token is None:
            raise AuthenticationFailed("Invalid or revoked API token.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        """Makes DRF answer 401 (not 403) when credentials are missing or wrong."""
        return 'Bearer realm="api"'


class StaffSessionAuthentication(SessionAuthentication):
    """A logged-in staff member's session; CSRF is enforced for writes (DRF's behaviour)."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        user = getattr(request._request, "user", None)
        if not user or not user.is_staff:
            return None
        return super().authenticate(request)


API_AUTHENTICATION = [BearerTokenAuthentication, StaffSessionAuthentication]


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return build_bearer_security_scheme_object("Authorization", "Bearer")


class StaffSessionScheme(OpenApiAuthenticationExtension):
    target_class = StaffSessionAuthentication
    name = "staffSessionAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        from django.conf import settings

        return {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}
