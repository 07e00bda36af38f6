"""The Celery app: `celery -A project worker` and `celery -A project beat`.

Configuration lives in Django settings under the CELERY_ namespace
(https://docs.celeryq.dev/en/stable/django/first-steps-with-django.html).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
