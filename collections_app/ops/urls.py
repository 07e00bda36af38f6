"""Included at the site root: the dashboard under /ops/, Prometheus at /metrics."""

from django.urls import path

from . import views

app_name = "ops"
urlpatterns = [
    path("ops/", views.dashboard, name="dashboard"),
    path("ops/metrics.json", views.metrics_json, name="metrics-json"),
    path("metrics", views.prometheus_metrics, name="prometheus"),
]
