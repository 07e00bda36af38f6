"""Settings for the collections service, read from the environment (see README "Configuration").

Defaults are production's: DEBUG is off and DJANGO_SECRET_KEY is required, unless
development is asked for with DJANGO_DEBUG=1 (`make run` and the tests do). Production also
sets DJANGO_ALLOWED_HOSTS, DATABASE_URL and CELERY_BROKER_URL (docs/security.md).
"""

import os
import re
import tempfile
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from . import logs

BASE_DIR = Path(__file__).resolve().parent.parent


N = TypeVar("N", int, float)


def _env_number(name: str, default: N, minimum: N, kind: type[N], what: str) -> N:
    raw = os.environ.get(name, "")
    try:
        value = kind(raw) if raw.strip() else default
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {what}, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_int(name: str, default: int, minimum: int = 0) -> int:
    return _env_number(name, default, minimum, int, "a whole number")


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    return _env_number(name, default, minimum, float, "a number")


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw in {"1", "true", "yes", "on"}


def env_dollars(name: str) -> Decimal | None:
    """A positive amount of dollars (cents at most), or None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = Decimal(raw)
        positive = value.is_finite() and value > 0 and value == value.quantize(Decimal("0.01"))
    except InvalidOperation:  # not a number, or too many digits to count in cents
        positive = False
    if not positive:
        raise ImproperlyConfigured(
            f"{name} must be a positive amount of dollars, such as 250 or 99.50, got {raw!r}"
        )
    return value


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set (or DJANGO_DEBUG=1 for development)"
        )
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_celery_results",
    "django_celery_beat",
    "collections_app",
    "sandbox",  # dev tooling: the UtilityAPI stand-in and sample data; the product never imports it
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # SQLite serves `make run` only: wait for the writer lock instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # The dashboard's covering index includes a column for PostgreSQL's index-only scans;
    # SQLite builds it without (harmless for make run's small tables).
    SILENCED_SYSTEM_CHECKS = ["models.W040"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LOGIN_URL = "admin:login"
WHITENOISE_USE_FINDERS = DEBUG  # `make run` serves admin assets without collectstatic too

# Production hardening: `manage.py check --deploy` is clean when DJANGO_DEBUG=0.
# X-Forwarded-Proto is believed only from a declared proxy: without one, any client could
# send it and pass for HTTPS.
BEHIND_PROXY = env_bool("DJANGO_BEHIND_PROXY", False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEBUG
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = 0 if DEBUG else env_int("DJANGO_HSTS_SECONDS", 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = not DEBUG
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]

# --- UtilityAPI -------------------------------------------------------------------------------
UTILITYAPI_BASE_URL = os.environ.get("UTILITYAPI_BASE_URL", "https://utilityapi.com/api/v2")
UTILITYAPI_TOKEN = os.environ.get("UTILITYAPI_TOKEN", "")
# The one token ever sent over plain http, where only the sandbox listens (client.py).
UTILITYAPI_SANDBOX_TOKEN = os.environ.get("UTILITYAPI_SANDBOX_TOKEN", "sandbox-token")
UTILITYAPI_RATE_LIMIT = env_float("UTILITYAPI_RATE_LIMIT", 50, minimum=0.01)
# Fraction of the rate limit kept in reserve so network jitter never lets the vendor count
# more than its limit in any one-second window.
UTILITYAPI_RATE_HEADROOM = env_float("UTILITYAPI_RATE_HEADROOM", 0.03)
UTILITYAPI_CONNECT_TIMEOUT = env_float("UTILITYAPI_CONNECT_TIMEOUT", 5)
UTILITYAPI_READ_TIMEOUT = env_float("UTILITYAPI_READ_TIMEOUT", 30)

# --- Collections ------------------------------------------------------------------------------
COLLECTIONS_MAX_ATTEMPTS = env_int("COLLECTIONS_MAX_ATTEMPTS", 8, minimum=1)
COLLECTIONS_RETRY_BASE_SECONDS = env_float("COLLECTIONS_RETRY_BASE_SECONDS", 5)
COLLECTIONS_RETRY_MAX_SECONDS = env_float("COLLECTIONS_RETRY_MAX_SECONDS", 600)
COLLECTIONS_STUCK_AFTER_SECONDS = env_int("COLLECTIONS_STUCK_AFTER_SECONDS", 300, minimum=1)
COLLECTIONS_SWEEP_INTERVAL_SECONDS = env_int("COLLECTIONS_SWEEP_INTERVAL_SECONDS", 30, minimum=1)
COLLECTIONS_ACCOUNT_PAUSE_SECONDS = env_int("COLLECTIONS_ACCOUNT_PAUSE_SECONDS", 300)
# Coalescing: requests with the same duration that are due together share one POST.
COLLECTIONS_BATCH_MAX_METERS = env_int("COLLECTIONS_BATCH_MAX_METERS", 1000, minimum=1)
COLLECTIONS_COALESCE_WINDOW_MS = env_int("COLLECTIONS_COALESCE_WINDOW_MS", 20)
COLLECTIONS_MAX_METERS_PER_REQUEST = env_int("COLLECTIONS_MAX_METERS_PER_REQUEST", 1000, minimum=1)
# A worker holds a claimed row this long past its HTTP timeouts before the sweep frees it.
COLLECTIONS_LEASE_MARGIN_SECONDS = env_int("COLLECTIONS_LEASE_MARGIN_SECONDS", 30)
# A caller sleeps for its rate-limit slot when it comes within this many seconds; a later slot
# sends the row back through the broker instead of holding a worker thread.
COLLECTIONS_SLOT_MAX_WAIT_SECONDS = env_float("COLLECTIONS_SLOT_MAX_WAIT_SECONDS", 2)
# On-demand prices per meter in USD, for the admin's cost estimate (collections_app/pricing.py):
# 1–7 months PER_MONTH each; 8–12 months FLAT_12; 13–36 months FLAT_12 + PER_MONTH past 12.
COLLECTIONS_PRICE_PER_MONTH = env_float("COLLECTIONS_PRICE_PER_MONTH", 1.50)
COLLECTIONS_PRICE_FLAT_12 = env_float("COLLECTIONS_PRICE_FLAT_12", 12.00)
# A bulk trigger whose estimate may exceed this many dollars asks for the meter count typed.
COLLECTIONS_CONFIRM_TYPED_ABOVE = env_float("COLLECTIONS_CONFIRM_TYPED_ABOVE", 1000)
# Estimated dollars let through per UTC day / month; past them requests are held for approval
# (docs/spending.md). Unset: no limit.
COLLECTIONS_DAILY_BUDGET = env_dollars("COLLECTIONS_DAILY_BUDGET")
COLLECTIONS_MONTHLY_BUDGET = env_dollars("COLLECTIONS_MONTHLY_BUDGET")

# --- Collection tracking (docs/tracking.md) ---------------------------------------------------
# The account's webhook secret; unset, POST /webhooks/utilityapi/ answers 404 (off, not open).
UTILITYAPI_WEBHOOK_SECRET = os.environ.get("UTILITYAPI_WEBHOOK_SECRET", "")
# Webhook bodies larger than this are refused with 413 before they are parsed.
COLLECTIONS_WEBHOOK_MAX_BODY_BYTES = env_int(
    "COLLECTIONS_WEBHOOK_MAX_BODY_BYTES", 1024 * 1024, minimum=1
)
# How often GET /events?is_delivered=false is read for events a webhook missed.
COLLECTIONS_EVENTS_POLL_SECONDS = env_int("COLLECTIONS_EVENTS_POLL_SECONDS", 300, minimum=1)
# A meter still collecting this long after acceptance is read with GET /meters?uids=.
COLLECTIONS_METER_POLL_AFTER_SECONDS = env_int(
    "COLLECTIONS_METER_POLL_AFTER_SECONDS", 3600, minimum=0
)

# --- Callbacks to the caller (docs/api.md#callbacks) -------------------------------------------
# The key of the X-Collections-Signature HMAC; unset, a callback_url is refused.
COLLECTIONS_CALLBACK_SECRET = os.environ.get("COLLECTIONS_CALLBACK_SECRET", "")
# Development only: callback URLs may point at loopback and private addresses.
COLLECTIONS_CALLBACK_ALLOW_PRIVATE = env_bool("COLLECTIONS_CALLBACK_ALLOW_PRIVATE", False)
# A callback that does not answer 2xx is tried again after this many seconds, doubled at each
# attempt (capped at an hour, with jitter), until COLLECTIONS_CALLBACK_GIVE_UP_SECONDS.
COLLECTIONS_CALLBACK_RETRY_BASE_SECONDS = env_float(
    "COLLECTIONS_CALLBACK_RETRY_BASE_SECONDS", 10, minimum=0.1
)
COLLECTIONS_CALLBACK_GIVE_UP_SECONDS = env_int(
    "COLLECTIONS_CALLBACK_GIVE_UP_SECONDS", 86_400, minimum=1
)

# --- Meter registry (docs/meters.md) ----------------------------------------------------------
METERS_SYNC_INTERVAL_SECONDS = env_int("METERS_SYNC_INTERVAL_SECONDS", 3600, minimum=1)
# The longest Retry-After or fleet pause a sync waits out; a longer one stops it until its next run.
METERS_SYNC_MAX_WAIT_SECONDS = env_float("METERS_SYNC_MAX_WAIT_SECONDS", 60)

# --- Celery (https://docs.celeryq.dev/en/stable/userguide/configuration.html) -----------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# The fleet's shared state (rate limit, pauses, call counters, heartbeats, the sweep's last
# run): the broker's Redis unless the broker is something else (RabbitMQ: amqp://…).
REDIS_URL = os.environ.get("REDIS_URL", "") or CELERY_BROKER_URL
# One cache for every process, in that Redis: the dashboard's probes and the API's and the
# admin login's rate limits, which so hold across web processes.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "collections-cache",
        "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
    }
}
# RabbitMQ only: "quorum" declares the queues as replicated quorum queues (docs/operations.md).
CELERY_TASK_DEFAULT_QUEUE_TYPE = logs.choice("CELERY_QUEUE_TYPE", "classic", ("classic", "quorum"))
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True  # task name, args and worker kept with each result row
# Result rows (the admin links each attempt to its task's) are kept this long, then deleted by
# the scheduled celery.backend_cleanup task below (result_expires, in the configuration guide).
COLLECTIONS_RESULTS_KEEP_DAYS = env_int("COLLECTIONS_RESULTS_KEEP_DAYS", 7, minimum=1)
CELERY_RESULT_EXPIRES = COLLECTIONS_RESULTS_KEEP_DAYS * 86_400
CELERY_TASK_ACKS_LATE = True  # a message is acknowledged only when its task has finished...
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # ...and redelivered if the worker died running it
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection around every task, so each task paid
# for a new PostgreSQL connection (docs/benchmarks.md: about half the worker's CPU per send).
# With this it closes a thread's connection only every 1,000 tasks, and project/celery.py closes
# broken or CONN_MAX_AGE-old ones between tasks, as Django does between web requests.
CELERY_DB_REUSE_MAX = 1000
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing must fail fast when Redis is down, so a web request is not held for minutes.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3600,
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5}
# django_celery_beat's DatabaseScheduler, touching BEAT_HEARTBEAT_FILE on every tick.
CELERY_BEAT_SCHEDULER = "collections_app.beat_scheduler:HeartbeatScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE = {
    "delete-expired-task-results": {"task": "celery.backend_cleanup", "schedule": 3600.0},
    "sweep-collection-requests": {
        "task": "collections_app.tasks.sweep",
        "schedule": float(COLLECTIONS_SWEEP_INTERVAL_SECONDS),
    },
    "deliver-callbacks": {
        "task": "collections_app.tasks.deliver_callbacks",
        "schedule": float(COLLECTIONS_SWEEP_INTERVAL_SECONDS),
        "options": {"expires": float(COLLECTIONS_SWEEP_INTERVAL_SECONDS)},
    },
    "sync-meters": {
        "task": "collections_app.tasks.sync_meters",
        "schedule": float(METERS_SYNC_INTERVAL_SECONDS),
        # A sync still queued when the next one is due is dropped, not piled up
        # (https://docs.celeryq.dev/en/stable/userguide/calling.html#expiration).
        "options": {"expires": float(METERS_SYNC_INTERVAL_SECONDS)},
    },
    "poll-collection-progress": {
        "task": "collections_app.tasks.poll_progress",
        "schedule": float(COLLECTIONS_EVENTS_POLL_SECONDS),
        "options": {"expires": float(COLLECTIONS_EVENTS_POLL_SECONDS)},
    },
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "collections_app.api.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "collections_app.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Collections service API",
    "DESCRIPTION": "Trigger UtilityAPI historical collections and poll for their outcome.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Logs, errors, liveness (docs/operations.md) ------------------------------------------------
LOG_LEVEL = logs.choice("LOG_LEVEL", "INFO", logs.LEVELS)
LOG_FORMAT = logs.choice("LOG_FORMAT", "plain", logs.FORMATS)
LOGGING = logs.config(LOG_LEVEL, LOG_FORMAT)
# Unset, nothing is sent anywhere; set, errors and beat's cron check-ins go to Sentry.
SENTRY_DSN = os.environ.get("SENTRY_DSN", "")
SENTRY_ENVIRONMENT = os.environ.get("SENTRY_ENVIRONMENT", "production")
# A worker's bootstep and beat's scheduler touch these files; `manage.py alive` reads them.
WORKER_HEARTBEAT_FILE = os.environ.get(
    "WORKER_HEARTBEAT_FILE", os.path.join(tempfile.gettempdir(), "collections-worker.alive")
)
BEAT_HEARTBEAT_FILE = os.environ.get(
    "BEAT_HEARTBEAT_FILE", os.path.join(tempfile.gettempdir(), "collections-beat.alive")
)
HEARTBEAT_INTERVAL_SECONDS = env_float("HEARTBEAT_INTERVAL_SECONDS", 10, minimum=0.1)

# --- Ops dashboard (/ops/, /ops/metrics.json, /metrics; see docs/dashboard.md) -----------------
# The oldest `submitted` request turns the stalls panel amber past this age.
OPS_STALL_WARNING_SECONDS = env_int(
    "OPS_STALL_WARNING_SECONDS", COLLECTIONS_STUCK_AFTER_SECONDS, minimum=1
)
# Timeout of each machinery probe (Redis, worker ping): a dead part shows red this fast.
OPS_PROBE_TIMEOUT_SECONDS = env_float("OPS_PROBE_TIMEOUT_SECONDS", 0.5, minimum=0.05)
OPS_REFRESH_SECONDS = env_int("OPS_REFRESH_SECONDS", 5, minimum=1)
OPS_FIGURES_MAX_AGE_SECONDS = env_int("OPS_FIGURES_MAX_AGE_SECONDS", 10, minimum=0)
# /metrics answers a bearer of this token, or a staff session; unset, staff sessions only.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

# --- Admin login (collections_app/login_throttle.py) ------------------------------------------
ADMIN_LOGIN_MAX_FAILURES = env_int("ADMIN_LOGIN_MAX_FAILURES", 10, minimum=1)
ADMIN_LOGIN_WINDOW_SECONDS = env_int("ADMIN_LOGIN_WINDOW_SECONDS", 900, minimum=1)

# --- JSON API (docs/api.md) -------------------------------------------------------------------
# Bodies larger than this are refused with 413 before they are read; Django's own limit on
# what it reads into memory is the same, so no other page reads more.
COLLECTIONS_API_MAX_BODY_BYTES = env_int("COLLECTIONS_API_MAX_BODY_BYTES", 256 * 1024, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = COLLECTIONS_API_MAX_BODY_BYTES
# POSTs per API token (or staff session) over a period: "N/s", "N/min", "N/hour" or "N/day".
COLLECTIONS_API_POST_RATE = os.environ.get("COLLECTIONS_API_POST_RATE", "").strip() or "120/min"
if not re.fullmatch(
    r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", COLLECTIONS_API_POST_RATE
):
    raise ImproperlyConfigured(
        f"COLLECTIONS_API_POST_RATE must look like 120/min, got {COLLECTIONS_API_POST_RATE!r}"
    )
COLLECTIONS_API_PAGE_SIZE = env_int("COLLECTIONS_API_PAGE_SIZE", 50, minimum=1)

if SENTRY_DSN:  # sentry_sdk is not even imported otherwise
    from . import sentry

    sentry.init(SENTRY_DSN, SENTRY_ENVIRONMENT)
