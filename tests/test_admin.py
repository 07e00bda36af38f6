"""The admin: add form through the service, read-only detail, retry action, permissions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from collections_app import services
from collections_app.exceptions import PermanentError
from collections_app.gate import pauses
from collections_app.models import CollectionRequest
from collections_app.services import outcomes

from .test_services import call, claimed

pytestmark = pytest.mark.django_db
ADD = reverse("admin:collections_app_collectionrequest_add")
LIST = reverse("admin:collections_app_collectionrequest_changelist")


@pytest.fixture
def operator(client: Any, django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("op", password="pw", is_staff=True)
    codenames = [
        "add_collectionrequest",
        "view_collectionrequest",
        "change_collectionrequest",
        "trigger_collection",
    ]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


def test_add_form_triggers_through_the_service(client: Any, operator: Any, redis_db: Any) -> None:
    response = client.post(ADD, {"meters": "m-1, m-2\nm-3\n", "collection_duration": "6"})
    request = CollectionRequest.objects.get()
    assert response.status_code == 302 and str(request.pk) in response["Location"]
    assert (request.meters, request.collection_duration) == (["m-1", "m-2", "m-3"], 6)
    assert (request.source, request.requested_by, request.status) == (
        "admin",
        operator,
        "submitted",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"meters": "", "collection_duration": ""}, "This field is required"),
        ({"meters": " , ,", "collection_duration": ""}, "meters is required"),
        ({"meters": "m-1\nm-1", "collection_duration": ""}, "more than once"),
        ({"meters": "m-1", "collection_duration": "37"}, "less than or equal to 36"),
        ({"meters": "m-1", "collection_duration": "0"}, "greater than or equal to 1"),
        ({"meters": "m-1", "collection_duration": "six"}, "Enter a whole number"),
    ],
)
def test_add_form_rejects_bad_input(
    client: Any, operator: Any, data: dict[str, str], message: str
) -> None:
    response = client.post(ADD, data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not CollectionRequest.objects.exists()


def test_adding_needs_the_trigger_permission(client: Any, operator: Any) -> None:
    operator.user_permissions.remove(Permission.objects.get(codename="trigger_collection"))
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, {"meters": "m-1"}).status_code == 403
    assert not CollectionRequest.objects.exists()


def test_detail_page_is_read_only_and_shows_attempts(client: Any, operator: Any) -> None:
    (request,) = claimed(["m-1"])
    outcomes.record_outcome(
        [request], PermanentError("not_found", "None exist.", status_code=404), call()
    )
    page = client.get(reverse("admin:collections_app_collectionrequest_change", args=[request.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "None exist." in html and "not_found" in html and "task-1" in html[:100000]
    assert 'name="status"' not in html  # no editable status field
    before = CollectionRequest.objects.get(pk=request.pk).status
    client.post(
        reverse("admin:collections_app_collectionrequest_change", args=[request.pk]),
        {"status": "pending"},
    )
    assert CollectionRequest.objects.get(pk=request.pk).status == before


def test_retry_action_resubmits_failed_requests(client: Any, operator: Any, redis_db: Any) -> None:
    (failed,) = claimed(["m-1"])
    outcomes.record_outcome([failed], PermanentError("http_500", "boom", status_code=500), call())
    waiting = services.request_collection(["m-2"], 3)
    response = client.post(
        LIST, {"action": "retry_failed", "_selected_action": [failed.pk, waiting.pk]}, follow=True
    )
    html = response.content.decode()
    assert "1 failed request(s) resubmitted" in html and "were not failed" in html
    failed.refresh_from_db()
    assert failed.status == "submitted" and failed.attempts == 0


def test_list_filters_and_search_by_meter_uid(client: Any, operator: Any) -> None:
    hit = services.request_collection(["abc-1", "xyz"])
    services.request_collection(["abc-10"])
    page = client.get(LIST, {"q": "abc-1"})
    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == [hit]
    by_id = client.get(LIST, {"q": str(hit.pk)})
    assert list(by_id.context["cl"].result_list) == [hit]
    filtered = client.get(LIST, {"status__exact": "failed"})
    assert list(filtered.context["cl"].result_list) == []


def test_list_says_why_calls_are_paused(client: Any, operator: Any, redis_db: Any) -> None:
    pauses.pause("account", 60, "402 payment_required: add funds")
    html = client.get(LIST).content.decode()
    assert "UtilityAPI account unusable" in html and "add funds" in html


def test_api_tokens_are_revoked_from_the_admin(admin_client: Any, django_user_model: Any) -> None:
    from collections_app.services import tokens

    user = django_user_model.objects.create_user("app")
    token, raw = tokens.issue(user, "web app")
    assert tokens.authenticate(raw) is not None
    url = reverse("admin:collections_app_apitoken_changelist")
    page = admin_client.get(url).content.decode()
    assert token.prefix in page and raw not in page
    admin_client.post(url, {"action": "revoke", "_selected_action": [token.pk]})
    assert tokens.authenticate(raw) is None


def test_retry_needs_add_besides_trigger(client: Any, operator: Any, redis_db: Any) -> None:
    (failed,) = claimed(["m-1"])
    outcomes.record_outcome([failed], PermanentError("http_500", "boom", status_code=500), call())
    operator.user_permissions.remove(Permission.objects.get(codename="add_collectionrequest"))
    assert 'value="retry_failed"' not in client.get(LIST).content.decode()
    client.post(LIST, {"action": "retry_failed", "_selected_action": [failed.pk]})
    assert CollectionRequest.objects.get(pk=failed.pk).status == "failed"
    assert client.get(ADD).status_code == 403


def test_request_page_has_no_save_and_refuses_a_post(client: Any, operator: Any) -> None:
    request = services.request_collection(["m-1"])
    url = reverse("admin:collections_app_collectionrequest_change", args=[request.pk])
    html = client.get(url).content.decode()
    assert f"Collection request {request.pk}" in html
    assert 'name="_save"' not in html and "Change collection request" not in html
    assert client.post(url, {"status": "failed"}).status_code == 405
    assert CollectionRequest.objects.get(pk=request.pk).status == "submitted"


def test_api_token_page_is_read_only(admin_client: Any, django_user_model: Any) -> None:
    from collections_app.services import tokens

    token, _ = tokens.issue(django_user_model.objects.create_user("app"), "web app")
    url = reverse("admin:collections_app_apitoken_change", args=[token.pk])
    html = admin_client.get(url).content.decode()
    assert token.prefix in html and 'name="_save"' not in html
    assert admin_client.post(url, {"name": "renamed"}).status_code == 403
    token.refresh_from_db()
    assert token.name == "web app"


def test_a_failed_request_page_offers_retry(client: Any, operator: Any, redis_db: Any) -> None:
    (failed,) = claimed(["m-1"])
    outcomes.record_outcome([failed], PermanentError("http_500", "boom", status_code=500), call())
    url = reverse("admin:collections_app_collectionrequest_change", args=[failed.pk])
    html = client.get(url).content.decode()
    assert 'value="Retry this request"' in html and "http_500" in html
    client.post(LIST, {"action": "retry_failed", "_selected_action": [failed.pk]})
    assert CollectionRequest.objects.get(pk=failed.pk).status == "submitted"
    assert 'value="Retry this request"' not in client.get(url).content.decode()


def test_the_list_filters_never_scan_every_row(client: Any, operator: Any) -> None:
    """Django's own filter for a field without choices (and the date drill-down) lists the
    values present with a SELECT DISTINCT over the whole table: none of those here."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    services.request_collection(["m-1"], 6)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(LIST).status_code == 200
    distinct = [q["sql"] for q in queries.captured_queries if "DISTINCT" in q["sql"]]
    assert distinct and all('WHERE "collections_app_collectionrequest"."status" = ' in sql
                            for sql in distinct)  # fmt: skip
    assert not any("DATE_TRUNC" in q["sql"] for q in queries.captured_queries)


def test_error_filter_offers_the_errors_of_failed_requests(client: Any, operator: Any) -> None:
    failed = services.request_collection(["m-1"])
    CollectionRequest.objects.filter(pk=failed.pk).update(status="failed", error="not_found")
    waiting = services.request_collection(["m-2"])
    CollectionRequest.objects.filter(pk=waiting.pk).update(error="temporarily_unavailable")
    page = client.get(LIST)
    (spec,) = [f for f in page.context["cl"].filter_specs if f.title == "error"]
    assert [choice["display"] for choice in spec.choices(page.context["cl"])] == [
        "All",
        "not_found",
    ]
    listed = client.get(LIST, {"error": "not_found"}).context["cl"].result_list
    assert list(listed) == [failed]


def test_duration_filter_uses_the_price_bands(client: Any, operator: Any) -> None:
    made = {months: services.request_collection([f"m-{months}"], months) for months in (7, 8, 12)}
    made[13] = services.request_collection(["m-13"], 13)
    default = services.request_collection(["m-default"])
    expected = {
        "1-7": [made[7]],
        "8-12": [made[12], made[8]],
        "13+": [made[13]],
        "default": [default],
    }
    for band, rows in expected.items():
        listed = client.get(LIST, {"duration": band}).context["cl"].result_list
        assert list(listed) == rows, band
