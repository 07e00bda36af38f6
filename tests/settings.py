"""Settings for the test run: the project's own, on the suite's defaults.

The suite needs PostgreSQL and a Redis database it may flush (db 1 by default, so that
`make run`'s db 0 is left alone). With CELERY_BROKER_URL=amqp://… it runs on RabbitMQ, and
REDIS_URL names that Redis database. Worker processes started by the tests get the same values
through their environment (tests/conftest.py).
"""

import os

os.environ.setdefault("DJANGO_DEBUG", "1")  # development: the dev secret key, `make run`'s
os.environ.setdefault("COLLECTIONS_API_POST_RATE", "100000/min")  # tests set their own limits
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")
os.environ.setdefault("UTILITYAPI_TOKEN", "sandbox-token")
if not os.environ["CELERY_BROKER_URL"].startswith("redis"):  # RabbitMQ: see tests/conftest.py
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/1")
os.environ.setdefault("COLLECTIONS_COALESCE_WINDOW_MS", "0")
os.environ.setdefault("OPS_FIGURES_MAX_AGE_SECONDS", "0")  # each test sees its own rows

from project.settings import *  # noqa: F403
