"""The dashboard in a real browser: Playwright drives Debian's Chromium against the live
server, a real Celery worker and the sandbox. An operator logs in, sees a failed group,
follows it to the admin, retries the request, and watches the dashboard change by itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from collections_app import services
from collections_app.models import CollectionRequest, Status

from .conftest import PASSWORD, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def failed_request(sandbox: Any) -> CollectionRequest:
    """A request UtilityAPI refuses once with 404 (the retry, unscripted, is accepted)."""
    sandbox.state.script.append(
        {"status": 404, "body": {"error": "not_found", "error_description": "None exist."}}
    )
    request = services.request_collection(["m-1"], source="admin")
    wait_until(lambda: CollectionRequest.objects.get(pk=request.pk).status == Status.FAILED)
    return request


def test_operator_retries_a_failed_group_from_the_dashboard(
    page: Any, live_server: Any, start_worker: Any, sandbox: Any, settings: Any,
    django_user_model: Any, tmp_path: Path,
) -> None:  # fmt: skip
    settings.OPS_REFRESH_SECONDS = 1
    start_worker(concurrency=2)
    request = failed_request(sandbox)
    django_user_model.objects.create_superuser("night-op", "op@example.com", PASSWORD)

    page.goto(f"{live_server.url}/ops/")  # not logged in: the admin's login form
    expect(page).to_have_url(f"{live_server.url}/admin/login/?next=/ops/")
    page.fill("#id_username", "night-op")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/ops/")
    expect(page.locator("#count-failed")).to_have_text("1")
    page.evaluate("window.notReloaded = true")  # gone if the page ever reloads
    expect(page.locator("#panel-failures")).to_have_attribute("data-state", "warn")
    group = page.locator('#failures tr[data-error="not_found"]')
    expect(group).to_contain_text("None exist.")
    page.screenshot(path=str(tmp_path / "dashboard-failed.png"), full_page=True)

    with page.context.expect_page() as opened:  # a new tab: the dashboard stays open
        group.locator("a").click(modifiers=["ControlOrMeta"])
    admin = opened.value
    expect(admin).to_have_url(f"{live_server.url}{_filtered('not_found')}")
    admin.check(f'input[name="_selected_action"][value="{request.pk}"]')
    admin.select_option('select[name="action"]', "retry_failed")
    admin.click('button[name="index"]')
    expect(admin.locator(".messagelist")).to_contain_text("1 failed request(s) resubmitted.")

    expect(page.locator("#count-pending")).to_have_text("1")
    expect(page.locator("#count-failed")).to_have_text("0")
    expect(page.locator("#failures")).to_contain_text("No failed requests.")
    assert page.evaluate("window.notReloaded") is True  # refreshed in place, not reloaded
    assert CollectionRequest.objects.get(pk=request.pk).status == Status.PENDING


def _filtered(error: str) -> str:
    return f"/admin/collections_app/collectionrequest/?status__exact=failed&error={error}"
