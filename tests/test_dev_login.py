"""scripts/dev_login.py: the fixed development login exists only in development, on a local
database."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from django.db import connection

from .conftest import ROOT


def dev_login(**env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if k not in {"DJANGO_DEBUG", "DJANGO_SETTINGS_MODULE"}
    }
    return subprocess.run(
        [sys.executable, "scripts/dev_login.py"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_the_development_opt_in_it_refuses() -> None:
    done = dev_login(DJANGO_SECRET_KEY="x" * 50)
    assert done.returncode != 0 and "DJANGO_DEBUG is off" in done.stderr


def test_a_remote_database_gets_no_fixed_password() -> None:
    """A database that is not local is never given admin/admin (and is not even reached)."""
    done = dev_login(DJANGO_DEBUG="1", DATABASE_URL="postgres://postgres@192.0.2.10:5432/prod")
    assert done.returncode == 0, done.stderr
    assert "Development superuser" not in done.stdout and "createsuperuser" in done.stdout


@pytest.mark.django_db(transaction=True)
def test_a_local_database_gets_the_development_login(django_user_model: Any) -> None:
    db = connection.settings_dict
    url = f"postgres://{db['USER'] or 'postgres'}@127.0.0.1:{db['PORT'] or 5432}/{db['NAME']}"
    done = dev_login(DJANGO_DEBUG="1", DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    assert "Development superuser: admin" in done.stdout
    assert django_user_model.objects.get(username="admin").check_password("admin")
