"""Brute-force protection for the admin login: after ADMIN_LOGIN_MAX_FAILURES failed logins
for one username, or from one client address, within ADMIN_LOGIN_WINDOW_SECONDS, further
attempts answer 429 (with Retry-After) without checking the password.

Counted in the default cache (Redis), so the limit holds across web processes. When Redis does
not answer, logins are checked as usual (and the outage logged).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


def _keys(request: HttpRequest) -> list[str]:
    username = request.POST.get("username", "").strip().lower()
    whom = [f"user:{username}", f"addr:{client_address(request)}"]
    return ["admin-login:" + hashlib.sha256(w.encode()).hexdigest() for w in whom]


def client_address(request: HttpRequest) -> str:
    """REMOTE_ADDR; behind a declared proxy, the address it appended to X-Forwarded-For."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if settings.BEHIND_PROXY and forwarded:
        return forwarded.split(",")[-1].strip()
    return str(request.META.get("REMOTE_ADDR", ""))


def throttled(login_view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap the admin site's login view."""

    def view(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if request.method != "POST":
            return login_view(request, *args, **kwargs)
        window = settings.ADMIN_LOGIN_WINDOW_SECONDS
        try:
            keys = _keys(request)
            if any((cache.get(k) or 0) >= settings.ADMIN_LOGIN_MAX_FAILURES for k in keys):
                response = HttpResponse(
                    "Too many failed logins: try again later.\n",
                    status=429,
                    content_type="text/plain",
                )
                response["Retry-After"] = str(window)
                return response
        except RedisError as err:
            log.warning("admin login limit not applied: Redis does not answer (%s)", err)
            return login_view(request, *args, **kwargs)
        response = login_view(request, *args, **kwargs)
        if not request.user.is_authenticated:  # the form was refused
            try:
                for key in keys:
                    cache.add(key, 0, window)
                    cache.incr(key)
            except (RedisError, ValueError) as err:
                log.warning("admin login failure not counted (%s)", err)
        return response

    return view
