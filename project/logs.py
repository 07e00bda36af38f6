"""The log format (LOG_FORMAT: plain or json) and the ids every line of the send path carries.

`json` renders each record, the project's and every library's, as one JSON object per line
through structlog's ProcessorFormatter, with the ids bound in the current context
(structlog.contextvars): the collection request, the Celery task and the vendor call. So
`grep <request id>` finds a request's lines from web, worker and beat alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import structlog
from django.core.exceptions import ImproperlyConfigured

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("plain", "json")
PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s"


def choice(name: str, default: str, allowed: Iterable[str]) -> str:
    """The environment variable `name` (case-insensitive), which must be one of `allowed`."""
    allowed = tuple(allowed)
    raw = os.environ.get(name, "").strip() or default
    for value in allowed:
        if raw.lower() == value.lower():
            return value
    raise ImproperlyConfigured(f"{name} must be one of {', '.join(allowed)}; got {raw!r}")


def config(level: str, fmt: str) -> dict[str, Any]:
    """Django's LOGGING for the level and format: one console handler on the root logger."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": PLAIN}, "json": json_formatter()},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": fmt}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"urllib3": {"level": "WARNING"}},
    }


def json_formatter() -> dict[str, Any]:
    return {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": [
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.stdlib.ExtraAdder(),
        ],
        "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ],
    }


def bind(**ids: Any) -> None:
    """Put `ids` on every line this thread logs from now on (until `clear`)."""
    structlog.contextvars.bind_contextvars(**{k: str(v) for k, v in ids.items()})


def clear() -> None:
    structlog.contextvars.clear_contextvars()
