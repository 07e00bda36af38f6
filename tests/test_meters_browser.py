"""The bulk trigger as an operator does it: Chromium (Debian's, through Playwright) on the
admin served by a live server."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission

from collections_app.models import CollectionRequest, Meter

from .test_meters import make_meters

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_operator_triggers_selected_meters(
    page: Any, live_server: Any, django_user_model: Any, redis_db: Any
) -> None:
    make_meters(3)
    make_meters(1, "rv", authorization_revoked=True)
    user = django_user_model.objects.create_user("op", password="pw", is_staff=True)
    codenames = ["view_meter", "add_collectionrequest", "trigger_collection"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))

    page.goto(f"{live_server.url}/admin/login/?next=/admin/collections_app/meter/")
    page.fill("#id_username", "op")
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    page.check("#action-toggle")  # every meter on the page
    page.select_option("select[name=action]", "trigger_collection")
    page.click("button[name=index]")

    summary = page.inner_text("#trigger-summary")
    assert "4 meter(s) selected" in summary and "3 meter(s) will be collected" in summary
    assert "$36.00 – $144.00" in page.inner_text("#estimate")
    page.fill("#id_collection_duration", "13")
    page.press("#id_collection_duration", "Enter")  # Enter only updates the estimate
    assert "$40.50" in page.inner_text("#estimate")
    assert not CollectionRequest.objects.exists()

    page.click("input[name=confirm]")
    assert "1 collection request(s) created for 3 meter(s)" in page.inner_text(".messagelist")
    request = CollectionRequest.objects.get()
    assert (request.meters, request.collection_duration) == (["m-00000", "m-00001", "m-00002"], 13)
    assert Meter.objects.filter(last_request=request).count() == 3
