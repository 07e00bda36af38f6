"""Included at the site root: the dashboard under /ops/, Prometheus at /metrics, /readyz."""

from django.urls import path

from . import views

app_name = "ops"
urlpatterns = [
    path("ops/", views.dashboard, name="dashboard"),
    path("ops/metrics.json", views.metrics_json, name="metrics-json"),
    path("metrics", views.prometheus_metrics, name="prometheus"),
    path("readyz", views.readyz, name="readyz"),
]
