"""/api/: the collections endpoints, the OpenAPI schema, and JSON 404s for the rest."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularJSONAPIView
from rest_framework.permissions import AllowAny

from . import views

app_name = "collections_api"

urlpatterns = [
    path("api/collections/", views.CollectionRequestList.as_view(), name="collection-list"),
    path(
        "api/collections/<str:id>/",
        views.CollectionRequestDetail.as_view(),
        name="collection-detail",
    ),
    # Public: the schema documents the API and holds no data (docs/api.md).
    path(
        "api/schema.json",
        SpectacularJSONAPIView.as_view(authentication_classes=[], permission_classes=[AllowAny]),
        name="schema",
    ),
    re_path(r"^api(?:/(?P<path>.*))?$", views.not_found, name="not-found"),
]
