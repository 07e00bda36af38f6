"""For `make run`: make sure the development superuser exists (scripts/run.py prints the
URLs and the login once every process is ready).

The fixed login `admin` / `admin` is created only when development is asked for
(DJANGO_DEBUG=1) and the database is local (SQLite, a Unix socket or a loopback host); any
other database gets no fixed password: create users with `manage.py createsuperuser`.
"""

import ipaddress
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402


def is_local(database: dict) -> bool:
    """SQLite, a Unix socket (no host, or a path) or a loopback address."""
    if database["ENGINE"].endswith("sqlite3"):
        return True
    host = str(database.get("HOST") or "")
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


if not settings.DEBUG:
    sys.exit("make run is for development: DJANGO_DEBUG is off, create users yourself.")

if is_local(settings.DATABASES["default"]):
    User = get_user_model()
    if not User.objects.filter(username="admin").exists():
        User.objects.create_superuser("admin", "admin@example.com", "admin")
    print("Development superuser: admin (password admin).")
else:
    print("Not a local database: no fixed login is made; use manage.py createsuperuser.")
