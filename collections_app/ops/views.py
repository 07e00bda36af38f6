"""The ops dashboard (/ops/), its figures as JSON (/ops/metrics.json) and for Prometheus
(/metrics). For staff with the permission to view collection requests (as the API asks);
/metrics also takes `Authorization: Bearer <METRICS_TOKEN>`."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from . import metrics, prometheus, readiness

VIEW_PERMISSION = "collections_app.view_collectionrequest"


def is_staff(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_active and user.is_staff)


def may_view(request: HttpRequest) -> bool:
    """Staff with view_collectionrequest: the figures describe every request."""
    return is_staff(request) and request.user.has_perm(VIEW_PERMISSION)


@require_GET
@never_cache
@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The page: rendered with a first snapshot, then refreshed by dashboard.js."""
    if not may_view(request):
        raise PermissionDenied(f"The dashboard needs the permission {VIEW_PERMISSION}.")
    return render(request, "collections_app/ops/dashboard.html", {"snapshot": metrics.snapshot()})


@require_GET
@never_cache
def metrics_json(request: HttpRequest) -> JsonResponse:
    """The snapshot as JSON; 403 (not a redirect: scripts read it) unless staff with the
    view permission."""
    if not is_staff(request):
        return JsonResponse({"error": "staff login required"}, status=403)
    if not may_view(request):
        return JsonResponse({"error": f"permission {VIEW_PERMISSION} required"}, status=403)
    return JsonResponse(metrics.snapshot())


@require_GET
@never_cache
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus' text format, for a bearer of METRICS_TOKEN or a staff session with the
    view permission."""
    if not (has_metrics_token(request) or may_view(request)):
        response = HttpResponse(
            f"metrics need a bearer token or a staff login with {VIEW_PERMISSION}\n", status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(prometheus.exposition(), content_type=CONTENT_TYPE_LATEST)


def has_metrics_token(request: HttpRequest) -> bool:
    """True when METRICS_TOKEN is set and the request bears it (compared in constant time)."""
    expected = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), expected.encode())
    )


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database, its migrations and Redis are ready, else 503 naming what failed.
    Open to anyone, like /healthz: it names parts, never their addresses or credentials."""
    result = readiness.check()
    return JsonResponse(result, status=200 if result["ready"] else 503)
