"""Callbacks in the admin: every attempt to POST a request's moments to its callback_url,
read-only (the outbox's rows are the services' to write). A request's page lists its own."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from .admin_tracking import ReadOnly
from .models import CallbackDelivery


@admin.register(CallbackDelivery)
class CallbackDeliveryAdmin(ReadOnly, admin.ModelAdmin):
    list_display = [
        "created",
        "request_link",
        "moment",
        "attempt",
        "next_attempt_at",
        "tried_at",
        "status_code",
        "error",
        "duration_ms",
        "delivered_at",
        "gave_up",
    ]
    list_filter = ["moment", ("delivered_at", admin.EmptyFieldListFilter), "gave_up", "error"]
    search_fields = ["request__id", "event_id"]  # by a request's or a moment's id
    show_full_result_count = False
    list_select_related = ["request"]
    fields = (
        "request",
        "event_id",
        "moment",
        "moment_at",
        "attempt",
        "created",
        "next_attempt_at",
        "tried_at",
        "status_code",
        "duration_ms",
        "error",
        "error_description",
        "body_sha256",
        "delivered_at",
        "gave_up",
    )
    readonly_fields = fields

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, term: str) -> Any:
        """A request id or a moment's event id (what the receiver saw as X-Collections-Delivery)."""
        if not term.strip():
            return queryset, False
        try:
            pk = uuid.UUID(term.strip())
        except ValueError:
            return queryset.none(), False
        return queryset.filter(Q(request_id=pk) | Q(event_id=pk)), False

    @admin.display(description="request", ordering="request")
    def request_link(self, obj: CallbackDelivery) -> str:
        url = reverse("admin:collections_app_collectionrequest_change", args=[obj.request_id])
        return format_html('<a href="{}">{}</a>', url, str(obj.request_id)[:8])
