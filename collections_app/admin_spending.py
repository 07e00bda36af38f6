"""The admin's spending page: estimated and expected spend per UTC day and month, by source
and by user, the budgets' room left, and the requests held for approval."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from .ops import spending


def spending_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """For anyone who may view collection requests (the figures describe them all)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    now = timezone.now()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Spending",
        "opts": model_admin.opts,
        "summary": spending.summary(now),
        **spending.breakdown(now),
    }
    return TemplateResponse(request, "collections_app/spending.html", context)
