"""The meter registry's admin: synced meters, read-only, with "Sync meters now" (a background
sync whose progress the list shows) and a bulk "Trigger historical collection" action that
goes through a confirmation page (Django's intermediate-page action pattern: the page re-posts
the selection to the changelist with the action's own fields). Above
COLLECTIONS_CONFIRM_TYPED_ABOVE dollars the page asks for the number of meters to be typed,
and every trigger is written to the admin log with its estimate.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join

from . import pricing, sync_jobs
from .admin_authorizations import badges, with_state
from .models import COLLECTABLE, MAX_MONTHS, MIN_MONTHS, Authorization, Meter
from .permissions import may_trigger
from .services import bulk_trigger
from .services.registry import VENDOR_FIELDS
from .validation import clean_duration

CONFIRM, ESTIMATE = "confirm", "estimate"  # the confirmation page's two submit buttons
BADGE = '<span style="background:{};color:#fff;border-radius:4px;padding:1px 6px">{}</span>'
BADGE_COLOURS = {"revoked": "#ba2121", "expired": "#c86400", "archived": "#666"}


class TriggerForm(forms.Form):
    """The confirmation page's input; `expected` and `shown_at` echo what the page showed."""

    collection_duration = forms.IntegerField(
        required=False,
        min_value=MIN_MONTHS,
        max_value=MAX_MONTHS,
        label="Months to collect",
        help_text=f"{MIN_MONTHS}–{MAX_MONTHS}. Empty: the account's default (12 or 36 months).",
        widget=forms.NumberInput(
            attrs={"min": MIN_MONTHS, "max": MAX_MONTHS, "style": "width:6em"}
        ),
    )
    typed_count = forms.IntegerField(
        required=False,
        label="Type the number of meters to confirm",
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"}),
    )
    expected = forms.IntegerField(min_value=0, widget=forms.HiddenInput)
    shown_at = forms.CharField(widget=forms.HiddenInput)

    def clean_collection_duration(self) -> int | None:
        """The service's own rule (validation.clean_duration), on top of the field's."""
        try:
            return clean_duration(self.cleaned_data.get("collection_duration"))
        except ValidationError as err:
            raise forms.ValidationError(err.message_dict["collection_duration"]) from err

    def clean_shown_at(self) -> datetime:
        parsed = parse_datetime(self.cleaned_data["shown_at"])
        if parsed is None or parsed.tzinfo is None:
            raise forms.ValidationError("The confirmation page is damaged: open it again.")
        return parsed


def titled(title: str, base: type = admin.FieldListFilter) -> Any:
    """A field's list filter under `title` (Django would say "By is archived")."""

    class Titled(base):  # type: ignore[valid-type, misc]
        template = "collections_app/list_filter.html"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.title = title

    return Titled


def typed_confirmation_needed(estimate: pricing.Estimate) -> bool:
    """A trigger that may cost more than COLLECTIONS_CONFIRM_TYPED_ABOVE dollars asks for the
    number of meters to be typed (the estimate's upper end counts)."""
    return estimate.high > Decimal(str(settings.COLLECTIONS_CONFIRM_TYPED_ABOVE))


class CollectableFilter(admin.SimpleListFilter):
    title = "Collectable"
    template = "collections_app/list_filter.html"
    parameter_name = "collectable"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No: revoked, expired or archived")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(COLLECTABLE)
        if self.value() == "no":
            return queryset.exclude(COLLECTABLE)
        return queryset


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    list_display = [
        "uid",
        "utility",
        "authorization_uid",
        "vendor_status",
        "flags",
        "last_request_link",
        "synced",
    ]
    list_filter = [
        CollectableFilter,
        ("authorization_revoked", titled("Authorization revoked", admin.BooleanFieldListFilter)),
        ("authorization_expired", titled("Authorization expired", admin.BooleanFieldListFilter)),
        ("is_archived", titled("Archived", admin.BooleanFieldListFilter)),
        ("is_activated", titled("Activated", admin.BooleanFieldListFilter)),
        ("vendor_status", titled("Vendor status", admin.AllValuesFieldListFilter)),
        ("utility", titled("Utility", admin.AllValuesFieldListFilter)),
        ("last_request__status", titled("Last request status", admin.AllValuesFieldListFilter)),
        ("synced_at", titled("Synced", admin.DateFieldListFilter)),
    ]
    search_fields = ["uid", "authorization_uid"]  # exact; see get_search_results
    search_help_text = "Meter or authorization uids (exact); several separated by spaces or commas."
    list_select_related = ["last_request"]
    list_per_page = 100
    show_full_result_count = False
    actions = ["trigger_collection"]
    fields = (
        "uid",
        *VENDOR_FIELDS,
        "authorization_revoked",
        "authorization_expired",
        "authorization",
        "last_request_link",
        "synced_at",
        "raw_json",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # meters come from UtilityAPI (manage.py sync_meters)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_trigger_permission(self, request: HttpRequest) -> bool:
        """Collections cost money: the action needs add and trigger (permissions.py)."""
        return may_trigger(request.user)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("sync/", view(self.sync_view), name="collections_app_meter_sync"),
            path(
                "sync/<str:task_id>/",
                view(self.sync_progress_view),
                name="collections_app_meter_sync_progress",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        """The list, with the sync in flight (if any) for the page to follow."""
        context = {"sync_task": sync_jobs.running(), **(extra_context or {})}
        return super().changelist_view(request, context)

    def sync_view(self, request: HttpRequest) -> HttpResponseRedirect:
        """POST: queue a sync (or follow the one in flight) and go back to the list."""
        if request.method != "POST" or not self.has_view_permission(request):
            raise PermissionDenied
        sync_jobs.queue_sync()
        self.message_user(request, "Meter sync queued; this page follows its progress.")
        return HttpResponseRedirect(reverse("admin:collections_app_meter_changelist"))

    def sync_progress_view(self, request: HttpRequest, task_id: str) -> JsonResponse:
        """GET: the sync's state, as JSON, for the list page to poll."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(sync_jobs.progress(task_id).as_dict())

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> Any:
        """Exact uids, meter or authorization, any number of them (pasted lists work)."""
        terms = [t for t in re.split(r"[\s,]+", search_term) if t]
        if not terms:
            return queryset, False
        return queryset.filter(Q(uid__in=terms) | Q(authorization_uid__in=terms)), False

    @admin.display(description="authorization")
    def flags(self, meter: Meter) -> str:
        """Badges for what keeps the meter from being collected; "ok" when nothing does."""
        names = [
            name
            for name, on in [
                ("revoked", meter.authorization_revoked),
                ("expired", meter.authorization_expired),
                ("archived", meter.is_archived),
            ]
            if on
        ]
        if not names:
            return format_html('<span style="color:{}">ok</span>', "#2a7a2a")
        return format_html_join(" ", BADGE, ((BADGE_COLOURS[n], n) for n in names))

    @admin.display(description="authorization (GET /authorizations)")
    def authorization(self, meter: Meter) -> str:
        """The meter's authorization as synced: its state, times, and a link to its page."""
        found = with_state(Authorization.objects.filter(uid=meter.authorization_uid)).first()
        if found is None:
            return "not listed by GET /authorizations (yet): counted as neither revoked nor expired"
        url = reverse("admin:collections_app_authorization_change", args=[found.pk])
        return format_html(
            '<a href="{}">{}</a> {} status {}, revoked {}, expires {}',
            url,
            found.uid,
            badges(found),
            found.status or "-",
            _when(found.revoked) if found.revoked else "-",
            _when(found.expires) if found.expires else "-",
        )

    @admin.display(description="last collection request", ordering="last_request__created")
    def last_request_link(self, meter: Meter) -> str:
        request = meter.last_request
        if request is None:
            return "-"
        url = reverse("admin:collections_app_collectionrequest_change", args=[request.pk])
        return format_html(
            '<a href="{}">{}<br><small>{}</small></a>', url, request.status, _when(request.created)
        )

    @admin.display(description="synced", ordering="synced_at")
    def synced(self, meter: Meter) -> str:
        return _when(meter.synced_at)

    @admin.display(description="vendor object")
    def raw_json(self, meter: Meter) -> str:
        return format_html("<pre>{}</pre>", json.dumps(meter.raw, indent=2, sort_keys=True))

    @admin.action(description="Trigger historical collection", permissions=["trigger"])
    def trigger_collection(self, request: HttpRequest, queryset: QuerySet) -> Any:
        """From the changelist: show the confirmation page. Its "estimate" button shows it
        again with the cost of the typed duration; "confirm" creates the requests and returns
        to the changelist, or shows the page again with what stopped it."""
        posted = CONFIRM in request.POST or ESTIMATE in request.POST
        form = TriggerForm(request.POST if posted else None)
        if CONFIRM in request.POST and form.is_valid() and self._trigger(request, queryset, form):
            return None  # the admin redirects back to the changelist
        return self._confirmation_page(request, queryset, form)

    def _trigger(self, request: HttpRequest, queryset: QuerySet, form: TriggerForm) -> bool:
        """Create the requests and log them; False (the reason added to the form) when
        nothing was created."""
        data = form.cleaned_data
        estimate = pricing.estimate(data["expected"], data["collection_duration"])
        if typed_confirmation_needed(estimate) and data.get("typed_count") != data["expected"]:
            form.add_error(
                "typed_count",
                f"Type {data['expected']}, the number of meters to collect, to confirm "
                f"a trigger that may cost {estimate}.",
            )
            return False
        try:
            created = bulk_trigger.trigger(
                queryset,
                data["collection_duration"],
                requested_by=request.user,
                expected=data["expected"],
                shown_at=data["shown_at"],
            )
        except bulk_trigger.TriggerConflict as err:
            form.add_error(None, str(err))
            return False
        count = sum(len(r.meters) for r in created)
        for created_request in created:
            self.log_addition(
                request,
                created_request,
                f"Triggered from the meter registry: {len(created_request.meters)} of "
                f"{count} meter(s) in {len(created)} request(s), estimated at most "
                f"{estimate} in all.",
            )
        self.message_user(
            request,
            f"{len(created)} collection request(s) created for {count} meter(s); "
            "they are sent in the background.",
            messages.SUCCESS,
        )
        held = sum(1 for r in created if r.hold)
        if held:
            self.message_user(
                request,
                f"{held} of them are held over the budget and wait for approval "
                "(Collection requests, filter Hold).",
                messages.WARNING,
            )
        return True

    def _confirmation_page(
        self, request: HttpRequest, queryset: QuerySet, form: TriggerForm
    ) -> TemplateResponse:
        plan = bulk_trigger.plan(queryset)
        duration = None
        if form.is_bound and "collection_duration" not in form.errors:  # validates the form
            duration = form.cleaned_data.get("collection_duration")
        estimate = pricing.estimate(plan.collectable, duration)
        context = {
            **self.admin_site.each_context(request),
            "title": "Trigger historical collection",
            "opts": self.model._meta,
            "form": form,
            "plan": plan,
            "max_meters": bulk_trigger.max_meters_per_request(),
            "estimate": estimate,
            "type_to_confirm": typed_confirmation_needed(estimate),
            "prices": _price_table(),
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_name": "trigger_collection",
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "shown_at": timezone.now().isoformat(),
            "back_url": request.get_full_path(),
        }
        return TemplateResponse(request, "collections_app/meter_trigger_confirmation.html", context)


def _when(moment: datetime) -> str:
    """A short time (the list must fit a laptop's width; Django's own format is longer)."""
    return f"{moment:%Y-%m-%d %H:%M}"


def _price_table() -> list[tuple[str, str]]:
    """The configured price table, as the confirmation page states it (per meter)."""
    prices = pricing.Prices.from_settings()
    usd = pricing.format_usd
    return [
        ("1–7 months", f"{usd(prices.per_month)} a month"),
        ("8–12 months", f"{usd(prices.flat_12)} flat"),
        ("13–36 months", f"{usd(prices.flat_12)} + {usd(prices.per_month)} a month past 12"),
    ]
