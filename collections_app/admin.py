"""Operators' view: records are read-only (no change permission, so no Save can write a
stale row over a worker's); writes go through the services package."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from . import (
    admin_callbacks,  # noqa: F401  (callback deliveries)
    admin_filters,
    admin_spending,
    admin_tracking,  # noqa: F401  (events and tracking calls)
    request_page,
    selectors,
    services,
)
from .forms import CollectionRequestForm
from .models import ApiToken, CollectionRequest, Source, Status
from .permissions import may_trigger
from .services import budget, tokens

BADGE = (
    '<span class="status-badge status-{1}" style="background:{0};color:#fff;'
    'border-radius:4px;padding:1px 7px">{1}</span>'
)


def task_link(task_id: str) -> str:
    if not task_id:
        return "-"
    url = reverse("admin:django_celery_results_taskresult_changelist") + f"?q={task_id}"
    return format_html('<a href="{}">{}</a>', url, task_id[:8])


@admin.register(CollectionRequest)
class CollectionRequestAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status_badge",
        "meter_count",
        "ignored_count",
        "attempts",
        "error",
        "next_attempt_at",
        "estimated_cost",
        "hold",
        "source",
        "created",
    ]
    list_filter = [
        "status",
        "hold",
        "collection_outcome",
        admin_filters.FailedErrorFilter,
        "source",
        admin_filters.DurationFilter,
        "created",
    ]
    search_fields = ["id", "meters"]
    # No date_hierarchy: its drill-down lists the dates present with a scan of every row.
    list_per_page = 50
    show_full_result_count = False
    actions = ["retry_failed", "approve_held", "reject_held"]

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> Any:
        """Search by request id or by one meter uid (an exact uid in the meters list)."""
        if not search_term.strip():
            return queryset, False
        return selectors.search_requests(queryset, search_term.strip()), False

    @admin.display(description="meters")
    def meter_count(self, obj: CollectionRequest) -> int:
        return len(obj.meters or [])

    @admin.display(description="ignored")
    def ignored_count(self, obj: CollectionRequest) -> int:
        return len(obj.ignored_meters or [])

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: CollectionRequest) -> str:
        return status_badge(obj.status)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return may_trigger(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # workers own the row; see change_view for the read-only page

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return may_trigger(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # requests are an audit trail of money spent

    @admin.action(description="Retry selected failed requests", permissions=["retry"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = services.retry_failed(queryset.filter(status=Status.FAILED))
        skipped = queryset.exclude(status=Status.FAILED).count()
        self.message_user(request, f"{count} failed request(s) resubmitted.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} selected request(s) were not failed and were left alone.",
                messages.WARNING,
            )

    @admin.action(description="Approve selected held requests (send them)", permissions=["retry"])
    def approve_held(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._decide(request, queryset, budget.approve, "approved: they are sent now")

    @admin.action(description="Reject selected held requests (fail them)", permissions=["retry"])
    def reject_held(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._decide(request, queryset, budget.reject, "rejected: failed, nothing sent")

    def _decide(self, request: HttpRequest, queryset: QuerySet, decide: Any, done: str) -> None:
        """Approve or reject the held rows selected (re-checked under a lock), each logged in
        its history."""
        decided = decide(queryset.filter(hold__isnull=False), request.user)
        for row in decided:
            self.log_change(request, row, f"Held request {done}.")
        self.message_user(request, f"{len(decided)} held request(s) {done}.", messages.SUCCESS)
        skipped = queryset.count() - len(decided)
        if skipped:
            self.message_user(
                request,
                f"{skipped} selected request(s) were not held and were left alone.",
                messages.WARNING,
            )

    def get_urls(self) -> list[Any]:
        spending = self.admin_site.admin_view(lambda r: admin_spending.spending_view(self, r))
        name = f"{self.opts.app_label}_{self.opts.model_name}_spending"
        return [path("spending/", spending, name=name), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        held = CollectionRequest.objects.filter(hold__isnull=False).count()
        if held:
            self.message_user(
                request,
                f"{held} request(s) are held over the budget, waiting for approval (filter: Hold).",
                messages.WARNING,
            )
        for pause in selectors.active_pauses():
            self.message_user(request, pause.message, messages.WARNING)
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """The request's own read-only page: status, meters, timeline; nothing to save."""
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET"])
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No collection request {object_id}.")
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": f"Collection request {obj.pk}",
            "opts": self.opts,
            "original": obj,
            "status_badge": status_badge(obj.status),
            "status_meaning": request_page.STATUS_MEANINGS[Status(obj.status)],
            "meter_rows": request_page.meter_rows(obj),
            "timeline": request_page.timeline(obj),
            "callbacks": selectors.callback_deliveries(obj),
            "task": task_link(obj.task_id),
            "may_retry": obj.status == Status.FAILED and self.has_retry_permission(request),
            "may_decide": obj.hold is not None and self.has_retry_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "collections_app/request_detail.html", context)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> Any:
        """Validate with the shared rules and trigger through request_collection."""
        if not self.has_add_permission(request):
            return super().add_view(request, form_url, extra_context)  # answers 403
        form = CollectionRequestForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            created = services.request_collection(
                form.cleaned_data["meters"],
                form.cleaned_data["collection_duration"],
                source=Source.ADMIN,
                requested_by=request.user,
            )
            if created.hold:
                self.message_user(
                    request,
                    f"Collection request {created.id} is held: {created.hold_reason}",
                    messages.WARNING,
                )
            else:
                self.message_user(request, f"Collection request {created.id} submitted.")
            url = reverse("admin:collections_app_collectionrequest_change", args=[created.pk])
            return HttpResponseRedirect(url)
        context = {
            **self.admin_site.each_context(request),
            "title": "Trigger a historical collection",
            "form": form,
            "opts": self.model._meta,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "collections_app/admin_add.html", context)


def status_badge(status: str) -> str:
    return format_html(BADGE, request_page.STATUS_COLOURS[Status(status)], status)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are issued by `manage.py create_api_token` (shown once); here they are listed,
    viewed (read-only: nothing to save), revoked and deleted."""

    list_display = ["prefix", "name", "user", "created", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username"]
    fields = ("prefix", "name", "user", "created", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the token must be shown once, on a terminal: create_api_token

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke selected tokens", permissions=["delete"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = tokens.revoke(queryset)
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


from . import admin_meters  # noqa: E402, F401  (the meter registry's admin)
