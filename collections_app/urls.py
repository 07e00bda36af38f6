from django.urls import include, path

urlpatterns = [
    path("", include("collections_app.api.urls")),
    path("", include("collections_app.ops.urls")),
]
