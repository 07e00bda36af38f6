"""Error reporting to Sentry, on only when SENTRY_DSN is set: Django's and Celery's
integrations, beat's periodic tasks as cron monitors, and no secret in what is sent.

Sentry's own scrubbing drops headers such as Authorization and variables named like
secrets; `scrub` also replaces the values of this project's secrets wherever they appear
(an error message, a local variable, a breadcrumb), whatever they are called there.
"""

from __future__ import annotations

from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration

SECRET_SETTINGS = (
    "UTILITYAPI_TOKEN",
    "UTILITYAPI_WEBHOOK_SECRET",
    "COLLECTIONS_CALLBACK_SECRET",
    "METRICS_TOKEN",
    "SECRET_KEY",
)
FILTERED = "[Filtered]"


def init(dsn: str, environment: str) -> None:
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        integrations=[DjangoIntegration(), CeleryIntegration(monitor_beat_tasks=True)],
        send_default_pii=False,
        before_send=before_send,
    )


def before_send(event: Any, hint: dict[str, Any]) -> Any:
    from django.conf import settings

    secrets = [getattr(settings, name, "") for name in SECRET_SETTINGS]
    return scrub(event, [s for s in secrets if s])


def scrub(value: Any, secrets: list[str]) -> Any:
    """`value` with every occurrence of each secret replaced, in nested dicts, lists, strings."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, FILTERED)
        return value
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value
