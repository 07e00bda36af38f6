"""Model permissions for the API (DjangoModelPermissions, with reads and paid triggers)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import DjangoModelPermissions
from rest_framework.request import Request

from ..models import TRIGGER_PERMISSION

VIEW = "%(app_label)s.view_%(model_name)s"


class CollectionRequestPermissions(DjangoModelPermissions):
    """GET needs view_collectionrequest; POST needs add_collectionrequest and
    trigger_collection (collections cost money). Other methods answer 405."""

    perms_map = {
        "GET": [VIEW],
        "HEAD": [VIEW],
        "OPTIONS": [],
        "POST": ["%(app_label)s.add_%(model_name)s", TRIGGER_PERMISSION],
    }

    def has_permission(self, request: Request, view: Any) -> bool:
        """As DjangoModelPermissions; a refusal names the permissions the user lacks."""
        if super().has_permission(request, view):
            return True
        if request.user:  # authenticated, so the answer is 403: say what is missing
            model = self._queryset(view).model
            needed = self.get_required_permissions(request.method or "", model)
            missing = [p for p in needed if not request.user.has_perm(p)]
            self.message = f"This needs the permission(s): {', '.join(missing)}."
        return False
