"""One hierarchy for everything UtilityAPI can answer, so policy code matches on types.

Transient errors are retried, permanent ones are not; configuration errors subclass
ImproperlyConfigured so that nothing ever retries them.
"""

from django.core.exceptions import ImproperlyConfigured


class UtilityAPIError(Exception):
    """A POST that did not trigger a collection. `error` is UtilityAPI's error type or ours."""

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code or '-'} {error}: {description}".strip())
        self.error = error
        self.description = description
        self.status_code = status_code
        self.retry_after = retry_after


class TransientError(UtilityAPIError):
    """503, 504, other 5xx but 500, timeouts and connection errors: worth trying again."""


class Throttled(TransientError):
    """429: no call may go out before `retry_after` seconds have passed."""


class BadResponse(TransientError):
    """A 2xx whose body is not the documented success object (a proxy page, garbage)."""


class PermanentError(UtilityAPIError):
    """400, 404, 500 and unexpected 4xx: the same POST would fail the same way."""


class AccountError(PermanentError):
    """401 or 402: the account itself is unusable, so the whole fleet pauses."""


class ConfigurationError(ImproperlyConfigured):
    """The service cannot call UtilityAPI at all (no token, bad base URL)."""
