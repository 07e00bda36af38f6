from django.urls import include, path

from . import webhooks

urlpatterns = [
    path("webhooks/utilityapi/", webhooks.utilityapi, name="webhook-utilityapi"),
    path("", include("collections_app.api.urls")),
    path("", include("collections_app.ops.urls")),
]
