"""The authorizations behind the meter registry in the admin: read-only, as the sync and the
authorization_* events left them, each linked to its meters."""

from __future__ import annotations

import json

from django.contrib import admin
from django.db.models import BooleanField, ExpressionWrapper, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from .admin_tracking import ReadOnly
from .models import AUTHORIZATION_EXPIRED, AUTHORIZATION_REVOKED, Authorization

BADGE = '<span style="background:{};color:#fff;border-radius:4px;padding:1px 6px">{}</span>'
BADGE_COLOURS = {"revoked": "#ba2121", "expired": "#c86400", "declined": "#666", "test": "#447e9b"}


def badges(authorization: Authorization) -> str:
    """Red revoked, orange expired, grey declined, blue test; "ok" when none applies. Revoked
    and expired are the rule's (models.AUTHORIZATION_REVOKED/_EXPIRED), annotated by
    with_state."""
    revoked, expired = authorization.revoked_now, authorization.expired_now  # type: ignore[attr-defined]
    names = [
        name
        for name, on in [
            ("revoked", revoked),
            ("expired", expired),
            ("declined", authorization.is_declined),
            ("test", authorization.is_test),
        ]
        if on
    ]
    if not names:
        return format_html('<span style="color:{}">ok</span>', "#2a7a2a")
    return format_html_join(" ", BADGE, ((BADGE_COLOURS[n], n) for n in names))


def with_state(queryset: QuerySet[Authorization]) -> QuerySet[Authorization]:
    """The authorizations with the rule's revoked and expired, as the meters get them."""
    return queryset.annotate(
        revoked_now=ExpressionWrapper(AUTHORIZATION_REVOKED, output_field=BooleanField()),
        expired_now=ExpressionWrapper(AUTHORIZATION_EXPIRED, output_field=BooleanField()),
    )


@admin.register(Authorization)
class AuthorizationAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["uid", "status", "state", "revoked", "expires", "meters", "synced_at"]
    list_filter = ["is_revoked", "is_expired", "is_declined", "is_test", "status"]
    search_fields = ["=uid"]
    list_per_page = 100
    show_full_result_count = False
    fields = (
        "uid",
        "status",
        "state",
        "revoked",
        "is_revoked",
        "expires",
        "is_expired",
        "is_declined",
        "is_test",
        "meters",
        "synced_at",
        "event_ts",
        "raw_json",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Authorization]:
        return with_state(super().get_queryset(request))

    @admin.display(description="state")
    def state(self, authorization: Authorization) -> str:
        return badges(authorization)

    @admin.display(description="meters")
    def meters(self, authorization: Authorization) -> str:
        url = reverse("admin:collections_app_meter_changelist")
        query = urlencode({"q": authorization.uid})
        return format_html('<a href="{}?{}">its meters</a>', url, query)

    @admin.display(description="vendor object")
    def raw_json(self, authorization: Authorization) -> str:
        return format_html("<pre>{}</pre>", json.dumps(authorization.raw, indent=2, sort_keys=True))


__all__ = ["AuthorizationAdmin", "badges", "with_state"]
