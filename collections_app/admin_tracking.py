"""Collection tracking in the admin: each request's per-meter progress (an inline), and the
events and tracking calls UtilityAPI exchanged with the service. All read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Event, MeterProgress, VendorCall


class ReadOnly:
    """Nothing added, changed or deleted here: the vendor's word is recorded, not edited."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MeterProgressInline(ReadOnly, admin.TabularInline):
    model = MeterProgress
    extra = 0
    verbose_name_plural = "Per-meter progress"
    fields = (
        "meter",
        "stage",
        "stage_ts",
        "status",
        "status_message",
        "status_ts",
        "bill_count",
        "interval_count",
        "result",
        "finished_at",
        "changed",
    )
    readonly_fields = fields


@admin.register(Event)
class EventAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["uid", "type", "meter_uid", "ts", "via", "received_at", "processed_at"]
    list_filter = ["type", "via", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["uid", "meter_uid", "authorization_uid"]
    show_full_result_count = False
    fields = (
        "uid",
        "type",
        "ts",
        "meter_uid",
        "authorization_uid",
        "via",
        "received_at",
        "processed_at",
        "acknowledged_at",
        "raw",
    )
    readonly_fields = fields


@admin.register(VendorCall)
class VendorCallAdmin(ReadOnly, admin.ModelAdmin):
    fields = (
        "started",
        "method",
        "endpoint",
        "status_code",
        "duration_ms",
        "items",
        "error",
        "error_description",
    )
    list_display = fields[:-1]
    list_filter = ["endpoint", "status_code", "error"]
    date_hierarchy = "started"
    show_full_result_count = False
    readonly_fields = fields
