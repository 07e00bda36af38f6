"""System checks (`manage.py check`, and every migrate and runserver): refuse configurations
that would leak a secret."""

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
