"""The permissions a paid trigger needs, in one place for the admin, the CLI and the API.

Triggering a collection creates a request (add) and spends money (the custom permission), so
it needs both; viewing needs only `view_collectionrequest`.
"""

from __future__ import annotations

from typing import Any

from .models import TRIGGER_PERMISSION

TRIGGER_PERMISSIONS = ("collections_app.add_collectionrequest", TRIGGER_PERMISSION)


def may_trigger(user: Any) -> bool:
    """True when `user` may trigger paid collections (add and trigger, both)."""
    return bool(user.has_perms(TRIGGER_PERMISSIONS))
