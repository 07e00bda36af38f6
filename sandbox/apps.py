"""The Django app that gives the sandbox's management commands a home."""

from django.apps import AppConfig


class SandboxConfig(AppConfig):
    name = "sandbox"
    verbose_name = "UtilityAPI sandbox (dev tooling)"
