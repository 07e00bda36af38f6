"""manage.py create_api_token and request_collection: output, exit codes, --wait with a real
worker."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from collections_app.api.serializers import FIELDS
from collections_app.models import ApiToken, CollectionRequest, Status
from collections_app.services import tokens

from .conftest import ROOT


def run(*args: str) -> tuple[str, str]:
    """call_command, returning (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_failing(*args: str) -> tuple[CommandError, str]:
    """call_command expected to fail: (the error, what it printed to stdout)."""
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command(*args, stdout=out, stderr=io.StringIO())
    return caught.value, out.getvalue()


# --- create_api_token --------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_api_token_prints_a_working_token_last(django_user_model: Any) -> None:
    user = django_user_model.objects.create_superuser("ops", password=None)
    out, err = run("create_api_token", "ops", "--name", "billing web app")
    *before, last = out.rstrip("\n").split("\n")
    assert before and last.startswith("cs_") and " " not in last
    assert err == ""  # a superuser may trigger: no note
    token = ApiToken.objects.get()
    assert (token.user, token.name, token.prefix) == (user, "billing web app", last[:12])
    assert token.digest == tokens.digest(last) and last not in out.split("\n")[0]
    response = Client(headers={"Authorization": f"Bearer {last}"}).get("/api/collections/")
    assert response.status_code == 200


@pytest.mark.django_db
def test_create_api_token_notes_missing_permissions(django_user_model: Any) -> None:
    django_user_model.objects.create_user("plain")
    out, err = run("create_api_token", "plain")
    assert out.rstrip().split("\n")[-1].startswith("cs_")
    assert "collections_app.trigger_collection" in err


@pytest.mark.django_db
def test_create_api_token_for_unknown_user_fails() -> None:
    error, out = run_failing("create_api_token", "nobody")
    assert error.returncode == 2 and "nobody" in str(error)
    assert out == "" and not ApiToken.objects.exists()


# --- request_collection ------------------------------------------------------------------------


@pytest.mark.django_db
def test_request_collection_prints_the_api_shape(django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        out, _ = run("request_collection", "m-1", "m-2", "--duration", "12")
    data = json.loads(out)
    assert list(data) == FIELDS
    stored = CollectionRequest.objects.get()
    assert data["id"] == str(stored.pk)
    assert (data["status"], data["source"], data["meters"], data["collection_duration"]) == (
        "submitted",
        "cli",
        ["m-1", "m-2"],
        12,
    )
    assert callbacks == [] and stored.announced_at is None  # due, for a relay to announce


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["m-1", "m-1"], "meters"),
        (["m 1"], "1st meter"),
        (["m-1", "--duration", "40"], "collection_duration"),
        (["m-1", "--duration", "0"], "collection_duration"),
        (["m-1", "--duration", "x"], "--duration"),
        (["m-1", "--wait", "-1"], "--wait"),
        (["m-1", "--wait", "nan"], "--wait"),
    ],
)
def test_bad_input_stores_nothing(
    django_capture_on_commit_callbacks: Any, args: list[str], field: str
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        error, out = run_failing("request_collection", *args)
    assert field in str(error) and out == ""
    assert not CollectionRequest.objects.exists() and callbacks == []


def test_bad_input_exit_code_and_stderr_from_the_shell() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "request_collection", "m-1", "--duration", "40"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "collection_duration must be from 1 to 36" in result.stderr
    assert "nothing stored" in result.stderr and result.stdout == ""


@pytest.mark.django_db
def test_wait_runs_out_while_submitted() -> None:
    """No worker runs (and this test's transaction never commits, so nothing is enqueued)."""
    started = time.monotonic()
    error, out = run_failing("request_collection", "m-1", "--wait", "0.5")
    assert 0.5 <= time.monotonic() - started < 5
    assert error.returncode == 3 and "still submitted after 0.5s" in str(error)
    assert json.loads(out)["status"] == Status.SUBMITTED


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_wait_follows_a_real_worker_to_pending(worker: Any, sandbox: Any) -> None:
    out, _ = run("request_collection", "m-1", "revoked-2", "--duration", "6", "--wait", "20")
    data = json.loads(out)
    assert (data["status"], data["accepted_meters"], data["ignored_meters"]) == (
        "pending",
        ["m-1"],
        ["revoked-2"],
    )
    assert data["attempts"] == 1 and data["last_http_status"] == 200
    assert [c["meters"] for c in sandbox.state.calls] == [["m-1", "revoked-2"]]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_wait_exits_1_when_the_request_fails(worker: Any, sandbox: Any) -> None:
    sandbox.state.script.append(
        {"status": 400, "body": {"error": "invalid_param", "error_description": "bad uids"}}
    )
    error, out = run_failing("request_collection", "m-1", "--wait", "20")
    assert error.returncode == 1 and "invalid_param: bad uids" in str(error)
    data = json.loads(out)
    assert (data["status"], data["error"], data["last_http_status"]) == (
        "failed",
        "invalid_param",
        400,
    )
