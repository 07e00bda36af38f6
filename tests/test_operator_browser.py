"""An operator's first hour, in a real browser: Playwright drives Debian's Chromium against
the live server (and, for `make run`, the real processes), a real Celery worker and the
sandbox. Each test does what a newcomer did and checks what they should have seen.

With UPDATE_SCREENSHOTS=1 the request page and the bulk confirmation are saved to docs/ (the
README shows them); otherwise into the test's temporary directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import subprocess
import termios
import threading
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from playwright.sync_api import expect

from collections_app import services
from collections_app.models import CollectionRequest, Meter, Status
from collections_app.services import tokens

from .conftest import PASSWORD, ROOT, wait_until
from .test_meters import make_meters

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path


def operator(django_user_model: Any, *codenames: str) -> Any:
    """A staff user with the given permissions (a superuser without any)."""
    if not codenames:
        return django_user_model.objects.create_superuser("op", "op@example.com", PASSWORD)
    user = django_user_model.objects.create_user("op", password=PASSWORD, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def log_in(page: Any, url: str, next_path: str, username: str = "op", password: str = PASSWORD):
    page.goto(f"{url}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{url}{next_path}")


# --- 1. make run: the URLs once everything is ready, and a clean stop --------------------


class Terminal:
    """A command on a pseudo-terminal of its own, as a person runs it (Ctrl-C included)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.output = b""
        self.env = env
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=_controlling_terminal,
        )
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            self.output += chunk

    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def close(self) -> None:
        """Kill everything `make run` started, whatever session honcho gave it (found by
        the marker in its environment): a failed test must not leave a worker consuming
        the next tests' messages."""
        marker = self.env.get(RUN_MARKER)
        for process in psutil.process_iter():
            try:
                if marker and process.environ().get(RUN_MARKER) == marker:
                    process.kill()
            except (OSError, psutil.Error):
                continue
        if self.process.poll() is None:
            self.process.wait(10)
        os.close(self.master)


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


RUN_MARKER = "COLLECTIONS_TEST_MAKE_RUN"  # in the environment of every process a test starts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_run_env(web_port: int, sandbox_port: int) -> dict[str, str]:
    db = connection.settings_dict
    # Not MAKEFLAGS/MAKELEVEL either: run from `make test`, the inner make would say
    # "Leaving directory" after everything stopped.
    prefixes = ("UTILITYAPI_", "DJANGO_", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        DATABASE_URL=f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        DJANGO_DEBUG="1",
        WEB_BIND=f"127.0.0.1:{web_port}",
        SANDBOX_PORT=str(sandbox_port),
        CELERY_CONCURRENCY="2",
        TERM="dumb",
    )
    env[RUN_MARKER] = uuid.uuid4().hex
    return env


def test_make_run_says_where_everything_is_once_ready_and_stops_cleanly(
    page: Any, redis_db: Any
) -> None:
    web_port, sandbox_port = free_port(), free_port()
    terminal = Terminal(["make", "run"], make_run_env(web_port, sandbox_port))
    try:
        wait_until(lambda: "Ctrl-C stops everything" in terminal.text(), timeout=240, interval=0.2)
        shown = terminal.text()
        banner_at = shown.index("login: admin / admin")
        # the banner comes after web answered and the worker said it was ready
        assert "ready." in shown[:banner_at]
        web = f"http://127.0.0.1:{web_port}"
        assert f"{web}/admin/" in shown and f"{web}/ops/" in shown
        assert f"http://127.0.0.1:{sandbox_port}/api/v2" in shown

        urls = subprocess.run(
            ["make", "--no-print-directory", "urls"],
            cwd=ROOT,
            env=make_run_env(web_port, sandbox_port),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"{web}/admin/" in urls.stdout and "admin / admin" in urls.stdout
        assert "Nothing answers" not in urls.stdout

        log_in(page, web, "/admin/collections_app/meter/", "admin", "admin")
        # The registry was empty: the start-up synced it from the sandbox in the background.
        wait_until(lambda: Meter.objects.count() == 12000, timeout=120, interval=0.5)
        page.reload()
        expect(page.locator("#result_list tbody tr").first).to_be_visible()

        terminal.ctrl_c()
        assert terminal.process.wait(60) == 0
        terminal.reader.join(10)
        lines = [line for line in terminal.text().splitlines() if line.strip()]
        assert lines[-1].rsplit("\r")[-1] == "Everything stopped (web, worker, beat, sandbox)."
        assert "Error 130" not in terminal.text() and "Interrupt" not in terminal.text()
    finally:
        terminal.close()
    with socket.socket() as probe:  # nothing is left listening
        assert probe.connect_ex(("127.0.0.1", web_port)) != 0


# --- 2. an empty registry: "Sync meters now" -----------------------------------------------


def test_operator_syncs_an_empty_registry_from_the_meters_list(
    page: Any, live_server: Any, start_worker: Any, sandbox: Any, django_user_model: Any
) -> None:
    sandbox.state.meter_count = 2500  # three pages of GET /meters
    start_worker(concurrency=2)
    operator(django_user_model, "view_meter")
    log_in(page, live_server.url, "/admin/collections_app/meter/")
    expect(page.locator("#sync-status")).to_contain_text("The registry is empty")

    page.click("#sync-now")
    expect(page.locator(".messagelist")).to_contain_text("Meter sync queued")
    status = page.locator("#sync-status")
    expect(status).to_have_attribute("data-state", "done", timeout=60_000)
    expect(status).to_contain_text("Synced 2,500 meter(s) in 3 page(s): 2,500 new, 0 updated")
    page.click("#sync-reload")
    expect(page.locator("#result_list tbody tr")).to_have_count(100)  # the first page of them
    assert Meter.objects.count() == 2500


# --- 3. the request page: a read-only record with a timeline ------------------------------


def test_request_page_is_a_read_only_record_with_a_timeline(
    page: Any, live_server: Any, start_worker: Any, sandbox: Any, django_user_model: Any,
    shots: Path,
) -> None:  # fmt: skip
    make_meters(2, "100")  # 100-00000 and 100-00001 are in the registry
    sandbox.state.script.append({"status": 503, "body": "<html>maintenance</html>"})
    start_worker(concurrency=2)
    user = operator(django_user_model)
    request = services.request_collection(
        ["100-00000", "100-00001", "revoked-9"], 12, source="admin", requested_by=user
    )
    wait_until(lambda: CollectionRequest.objects.get(pk=request.pk).status == Status.PENDING)

    url = f"/admin/collections_app/collectionrequest/{request.pk}/change/"
    log_in(page, live_server.url, url)
    expect(page.locator("h1")).to_have_text(f"Collection request {request.pk}")
    assert page.locator("input[type=submit][name^=_save], input[name=_continue]").count() == 0
    expect(page.locator("#request-status .status-badge")).to_have_text("pending")

    kinds = page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.kind)")
    assert kinds == ["stored", "unavailable", "accepted", "pending"]
    expect(page.locator("#timeline li").nth(1)).to_contain_text("HTTP 503")
    expect(page.locator("#timeline li").nth(3)).to_contain_text("2 meter(s) accepted, 1 ignored")

    rows = page.locator("#request-meters tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("accepted")
    expect(rows.nth(2)).to_contain_text("ignored")
    expect(rows.nth(2)).to_contain_text("not in the registry")
    page.screenshot(path=str(shots / "request-page.png"), full_page=True)

    rows.nth(0).locator("a").click()  # the meter in the registry
    expect(page).to_have_url(re.compile(r"/admin/collections_app/meter/\d+/change/$"))
    expect(page.locator("#content h2")).to_have_text("100-00000")


def test_api_token_page_is_read_only(page: Any, live_server: Any, django_user_model: Any) -> None:
    operator(django_user_model)
    token, _ = tokens.issue(django_user_model.objects.create_user("app"), "web app")
    url = f"/admin/collections_app/apitoken/{token.pk}/change/"
    log_in(page, live_server.url, url)
    expect(page.locator("#content")).to_contain_text(token.prefix)
    assert page.locator("input[name=_save], input[name=_continue]").count() == 0
    page.goto(f"{live_server.url}/admin/collections_app/apitoken/")
    page.check(f'input[name="_selected_action"][value="{token.pk}"]')
    page.select_option('select[name="action"]', "revoke")
    page.click('button[name="index"]')
    expect(page.locator(".messagelist")).to_contain_text("1 token(s) revoked.")


# --- 4. validation: every problem at once, positions as people count --------------------


def test_add_form_lists_every_problem_with_positions_people_count(
    page: Any, live_server: Any, django_user_model: Any
) -> None:
    operator(django_user_model, "add_collectionrequest", "trigger_collection")
    log_in(page, live_server.url, "/admin/collections_app/collectionrequest/add/")
    page.fill("#id_meters", "100001, 100001, bad meter")
    page.click("input[type=submit]")
    errors = page.locator(".errorlist li")
    expect(errors).to_have_count(2)
    expect(errors.nth(0)).to_have_text(
        "meters lists 100001 more than once (the 1st and 2nd meters)."
    )
    expect(errors.nth(1)).to_contain_text("the 3rd meter ('bad meter') is not a meter uid")
    assert not CollectionRequest.objects.exists()


# --- 5. registry columns: last request from every source, labels, width -----------------


def test_registry_shows_the_last_request_from_every_source(
    page: Any, live_server: Any, django_user_model: Any, client: Any, redis_db: Any,
    shots: Path,
) -> None:  # fmt: skip
    make_meters(3, "m")
    user = operator(django_user_model)
    operator_token = tokens.issue(user, "test")[1]
    log_in(page, live_server.url, "/admin/collections_app/collectionrequest/add/")
    page.fill("#id_meters", "m-00000")
    page.click("input[type=submit]")
    expect(page.locator(".messagelist")).to_contain_text("submitted")
    answer = client.post(
        "/api/collections/",
        {"meters": ["m-00001"]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {operator_token}"},
    )
    assert answer.status_code == 202
    call_command("request_collection", "m-00002", stdout=open(os.devnull, "w"))  # noqa: SIM115

    page.goto(f"{live_server.url}/admin/collections_app/meter/")
    by_uid = {
        source: CollectionRequest.objects.get(source=source) for source in ("admin", "api", "cli")
    }
    for n, source in enumerate(["admin", "api", "cli"]):
        row = page.locator("#result_list tbody tr", has_text=f"m-0000{n}")
        link = row.locator("td.field-last_request_link a")
        expect(link).to_contain_text("submitted")
        assert str(by_uid[source].pk) in (link.get_attribute("href") or "")

    filters = page.locator("#changelist-filter summary").all_inner_texts()
    assert {"Archived", "Activated", "Last request status"} <= {f.strip() for f in filters}
    assert not any(f.strip().startswith("By ") for f in filters)
    page.screenshot(path=str(shots / "meters-list.png"), full_page=True)
    # every column is in view: nothing hidden in the list's horizontal scroll
    results = page.locator("#changelist .results")
    assert results.evaluate("el => el.scrollWidth <= el.clientWidth")
    last_column = page.locator("#result_list thead th").last.bounding_box()
    box = results.bounding_box()
    assert last_column["x"] + last_column["width"] <= box["x"] + box["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400


# --- 6. a costly bulk trigger asks for the number of meters, and is logged ---------------


def test_costly_bulk_trigger_asks_to_type_the_meter_count(
    page: Any, live_server: Any, django_user_model: Any, redis_db: Any, shots: Path
) -> None:
    make_meters(1200)
    operator(django_user_model, "view_meter", "add_collectionrequest", "trigger_collection")
    log_in(page, live_server.url, "/admin/collections_app/meter/")
    page.check("#action-toggle")
    page.click(".actions .question a")  # "Select all 1200 meters"
    page.select_option("select[name=action]", "trigger_collection")
    page.click("button[name=index]")

    expect(page.locator("#estimate")).to_contain_text("$14,400.00 – $57,600.00")
    confirm = page.locator("#confirm-trigger")
    expect(page.locator("#type-to-confirm")).to_contain_text("type 1200")
    expect(confirm).to_be_disabled()
    page.fill("#id_typed_count", "120")
    expect(confirm).to_be_disabled()
    page.screenshot(path=str(shots / "bulk-confirmation.png"), full_page=True)
    page.fill("#id_typed_count", "1200")
    expect(confirm).to_be_enabled()
    confirm.click()

    expect(page.locator(".messagelist")).to_contain_text(
        "2 collection request(s) created for 1200 meter(s)"
    )
    entries = LogEntry.objects.filter(content_type__model="collectionrequest")
    assert entries.count() == 2
    assert all("estimated at most $14,400.00 – $57,600.00" in e.change_message for e in entries)


def test_the_typed_count_is_checked_by_the_server_too(
    django_user_model: Any, client: Any, redis_db: Any
) -> None:
    """A confirmation posted without the number (no JavaScript, or a forged form) creates
    nothing."""
    from .test_meters import choose_action, hidden_inputs

    meters = make_meters(1200)
    user = operator(django_user_model, "view_meter", "add_collectionrequest", "trigger_collection")
    client.force_login(user)
    shown = choose_action(client, meters[:1], across=True)
    data = hidden_inputs(shown.content.decode())
    data.update(confirm="x", collection_duration="", typed_count="12")
    answer = client.post("/admin/collections_app/meter/", data)
    assert answer.status_code == 200
    assert "Type 1200, the number of meters to collect" in re.sub(r"\s+", " ", answer.text)
    assert not CollectionRequest.objects.exists()
