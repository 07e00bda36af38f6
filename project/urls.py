from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path
from django.views.generic import RedirectView

from collections_app.login_throttle import throttled

urlpatterns = [
    path("", RedirectView.as_view(url="/ops/", permanent=False)),
    path("healthz", lambda request: HttpResponse("ok", content_type="text/plain")),
    path("admin/login/", throttled(admin.site.login), name="admin-login"),
    path("admin/", admin.site.urls),
    path("", include("collections_app.urls")),
]
