"""Rate limit on the API's writes: POSTs per API token (per user for staff sessions), counted
in the default cache (Redis), so the limit holds across web processes and hosts.

The rate is settings.COLLECTIONS_API_POST_RATE ("120/min"); over it, a 429 `rate_limited` with
Retry-After. Reads are not limited. When Redis does not answer, writes are let through (and
logged): a request is stored in PostgreSQL, and creating one must not depend on Redis.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from ..models import ApiToken

log = logging.getLogger(__name__)


class PostRateThrottle(SimpleRateThrottle):
    scope = "collections_post"

    def get_rate(self) -> str:
        return str(settings.COLLECTIONS_API_POST_RATE)

    def get_cache_key(self, request: Request, view: Any) -> str:
        token = request.auth
        who = f"token-{token.pk}" if isinstance(token, ApiToken) else f"user-{request.user.pk}"
        return self.cache_format % {"scope": self.scope, "ident": who}

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method != "POST":
            return True
        try:
            return super().allow_request(request, view)
        except RedisError as err:
            log.warning("API rate limit not applied: Redis does not answer (%s)", err)
            return True
