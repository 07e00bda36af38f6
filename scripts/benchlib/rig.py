"""The processes the benchmark owns (its own redis-server, the sandbox, Celery workers, the
Procfile's web server) and their CPU time and memory, read with psutil."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parents[2]
WORKER_ROOT = ROOT  # the checkout the workers run (bench.py --worker-tree: compare another)
PY = sys.executable
TOKEN = "sandbox-token"  # noqa: S105 (the sandbox's default token, as `make run` uses it)


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:g}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def procfile(name: str) -> str:
    """The command of one Procfile entry, so the benchmark runs what `make run` runs."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise KeyError(f"no {name!r} in the Procfile")


class Process:
    """A subprocess in its own session, its output in a temporary log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], name: str, cwd: Path = ROOT) -> None:
        self.name = name
        fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        self.log = Path(path)
        self.popen = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            cmd, cwd=cwd, env=env, stdout=fd, stderr=subprocess.STDOUT, start_new_session=True
        )
        os.close(fd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
        return True

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process tree so far."""
        return sum(_ignore_gone(lambda p: sum(p.cpu_times()[:2]), p) for p in self.tree())

    def rss_mb(self) -> float:
        return sum(_ignore_gone(lambda p: p.memory_info().rss, p) for p in self.tree()) / 2**20

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after 20 s."""
        if self.popen.poll() is None:
            os.killpg(self.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        self.log.unlink(missing_ok=True)


def _ignore_gone(read: Callable[[psutil.Process], float], process: psutil.Process) -> float:
    try:
        return read(process)
    except psutil.NoSuchProcess:
        return 0.0


class RedisServer(Process):
    """A disk-less redis-server of the benchmark's own on a free port (never a shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
               "--save", "", "--appendonly", "no"]  # fmt: skip
        super().__init__(cmd, dict(os.environ), "redis")
        wait_until(lambda: self.alive() and "Ready to accept" in self.output(), 10, "redis")

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


class Sandbox(Process):
    """`manage.py utilityapi_sandbox` on a free loopback port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        cmd = [PY, "manage.py", "utilityapi_sandbox", "--port", str(self.port), "--rate", "0",
               "--latency-ms", "0"]  # fmt: skip
        super().__init__(cmd, env, "sandbox")
        self.url = f"http://127.0.0.1:{self.port}/api/v2"
        self.http = requests.Session()
        wait_until(lambda: self.alive() and _answers(self.url + "/_sandbox/stats"), 30, "sandbox")

    def control(self, action: str, body: dict[str, Any] | None = None) -> None:
        answer = self.http.post(f"{self.url}/_sandbox/{action}", json=body or {}, timeout=10)
        answer.raise_for_status()

    def configure(self, rate: float, latency_ms: int) -> None:
        """Set the rate limit and latency, and forget every call and script so far."""
        self.control("config", {"rate": rate, "latency_ms": latency_ms})
        self.control("reset")

    def stats(self) -> dict[str, Any]:
        response = self.http.get(self.url + "/_sandbox/stats", timeout=60)
        response.raise_for_status()
        return dict(response.json())


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except (requests.ConnectionError, requests.Timeout):  # not up yet, or still loading
        return False


class Worker(Process):
    """A real `celery -A project worker` with the given pool and concurrency."""

    def __init__(self, env: dict[str, str], pool: str, concurrency: int) -> None:
        cmd = [PY, "-m", "celery", "-A", "project", "worker", "--pool", pool,
               "--concurrency", str(concurrency), "--hostname", f"bench-{uuid.uuid4().hex[:8]}@%h",
               "--loglevel", "INFO", "--without-gossip", "--without-mingle",
               "--without-heartbeat"]  # fmt: skip
        super().__init__(cmd, env, "worker", cwd=WORKER_ROOT)
        wait_until(lambda: self.alive() and "ready." in self.output(), 60, "worker start")


class Fleet:
    """`processes` identical workers, measured together (CPU and memory are sums)."""

    def __init__(self, env: dict[str, str], pool: str, concurrency: int, processes: int) -> None:
        self.workers: list[Worker] = []
        try:
            self.workers += [Worker(env, pool, concurrency) for _ in range(processes)]
        except BaseException:
            self.stop()
            raise
        self.label = label(pool, concurrency, processes)

    def cpu_seconds(self) -> float:
        return sum(worker.cpu_seconds() for worker in self.workers)

    def rss_mb(self) -> float:
        return sum(worker.rss_mb() for worker in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def label(pool: str, concurrency: int, processes: int = 1) -> str:
    one = f"{pool} × {concurrency}"
    return one if processes == 1 else f"{processes} workers of {one}"


class Web(Process):
    """The Procfile's `web` command (gunicorn) on a free loopback port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.command = procfile("web")
        env = {**env, "WEB_BIND": f"127.0.0.1:{self.port}", "PATH": _with_venv(env)}
        super().__init__(["bash", "-c", "exec " + self.command], env, "web")
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        wait_until(lambda: self.alive() and _answers(self.url + "/healthz"), 60, "web start")


def _with_venv(env: dict[str, str]) -> str:
    return os.pathsep.join([str(Path(PY).parent), env.get("PATH", "")])
