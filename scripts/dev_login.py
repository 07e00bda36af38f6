"""For `make run`: make sure the development superuser exists (scripts/run.py prints the
URLs and the login once every process is ready)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402

if not settings.DEBUG:
    sys.exit("make run is for development: DJANGO_DEBUG is off, create users yourself.")

User = get_user_model()
if not User.objects.filter(username="admin").exists():
    User.objects.create_superuser("admin", "admin@example.com", "admin")
