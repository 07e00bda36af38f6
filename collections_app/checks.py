"""System checks (`manage.py check`, and every migrate and runserver): refuse configurations
that would leak a secret; `check --deploy` also warns of development-only openings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from .client import check_destination
from .exceptions import ConfigurationError


@checks.register(checks.Tags.security)
def token_destination(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A real UtilityAPI token with a plain-http (sandbox) base URL is an error."""
    try:
        check_destination(
            settings.UTILITYAPI_BASE_URL,
            settings.UTILITYAPI_TOKEN,
            settings.UTILITYAPI_SANDBOX_TOKEN,
        )
    except ConfigurationError as err:
        return [checks.Error(str(err), id="collections.E001")]
    return []


@checks.register(checks.Tags.security, deploy=True)
def callbacks_to_private_addresses(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """COLLECTIONS_CALLBACK_ALLOW_PRIVATE is for development: in production it lets any API
    caller aim callbacks at the service's own network."""
    if settings.COLLECTIONS_CALLBACK_ALLOW_PRIVATE and not settings.DEBUG:
        return [
            checks.Warning(
                "COLLECTIONS_CALLBACK_ALLOW_PRIVATE=1 lets callback URLs reach loopback and "
                "private addresses (the service's own network).",
                hint="Unset it outside development (docs/security.md).",
                id="collections.W001",
            )
        ]
    return []
