"""The web side's cost of creating a request: POST /api/collections/ through gunicorn when
the JSON API is there, else services.request_collection measured in this process."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from .procs import PY, ROOT, Web, cpu_seconds

API_PATH = "/api/collections/"
USER = "bench"
CONCURRENCY = 4


def api_ready() -> bool:
    from django.urls import Resolver404, resolve

    try:
        resolve(API_PATH)
    except Resolver404:
        return False
    return True


def measure(bench: Any, n: int) -> dict[str, Any]:
    if api_ready():
        return _through_gunicorn(bench, n)
    return _in_process(n)


def _in_process(n: int) -> dict[str, Any]:
    from collections_app import services

    cpu, start = time.thread_time(), time.perf_counter()
    for i in range(n):
        services.request_collection([f"web-{i}"], source="api")
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - start
    return {
        "how": "services.request_collection in-process (the JSON API was not there yet)",
        "requests": n,
        "cpu_ms_per_request": cpu * 1000 / n,
        "wall_ms_per_request": wall * 1000 / n,
    }


def _through_gunicorn(bench: Any, n: int) -> dict[str, Any]:
    token = _api_token(bench)
    web = Web(bench.env({}))
    try:
        cpu0, start = cpu_seconds(web.pid), time.perf_counter()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            codes = list(pool.map(lambda i: _post(web.url, token, i), range(n)))
        wall = time.perf_counter() - start
        cpu = cpu_seconds(web.pid) - cpu0
    finally:
        web.stop()
    return {
        "how": f"POST {API_PATH} through gunicorn (2 workers × 4 threads), {CONCURRENCY} clients",
        "requests": n,
        "accepted": sum(1 for code in codes if code == 202),
        "cpu_ms_per_request": cpu * 1000 / n,
        "rps": n / wall,
    }


def _post(url: str, token: str, i: int) -> int:
    response = requests.post(
        url + API_PATH,
        json={"meters": [f"web-{i}"]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return response.status_code


def _api_token(bench: Any) -> str:
    """A superuser's token, from `manage.py create_api_token` (printed alone on the last line)."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    if not user_model.objects.filter(username=USER).exists():
        user_model.objects.create_superuser(USER, f"{USER}@example.com", None)
    cmd = [PY, "manage.py", "create_api_token", USER]
    done = subprocess.run(  # noqa: S603
        cmd, cwd=ROOT, env=bench.env({}), check=True, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1].strip()
