"""Subprocesses the benchmark owns (sandbox, Celery workers, gunicorn) and what /proc says
about them (CPU time and peak memory of a whole process tree)."""

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

import requests

ROOT = Path(__file__).resolve().parents[2]
WORKER_ROOT = ROOT  # the checkout the workers run (bench.py --worker-tree: compare another)
PY = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")
TOKEN = "bench-sandbox-token"  # noqa: S105 (the sandbox's own, loopback-only token)


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:g}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- /proc ----------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from `state` on; comm may hold spaces


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            parents[int(entry.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree.extend(frontier)
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU time of a process tree so far."""
    total = 0
    for pid in process_tree(root):
        fields = _stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def peak_rss_mb(root: int) -> float:
    """Sum of the peak resident memory (VmHWM) of every process in the tree."""
    total_kb = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


# --- processes ------------------------------------------------------------------------------


class Process:
    """A subprocess in its own session, its output in a temporary log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], name: str, cwd: Path = ROOT) -> None:
        self.name = name
        fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(fd)
        self.log = Path(path)
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
                cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
        return True

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after 20 s."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self.log.unlink(missing_ok=True)


class Sandbox(Process):
    """`manage.py utilityapi_sandbox` on a free loopback port."""

    def __init__(self, env: dict[str, str], rate: float = 0, latency_ms: int = 0) -> None:
        self.port = free_port()
        cmd = [PY, "manage.py", "utilityapi_sandbox", "--port", str(self.port), "--token", TOKEN]
        cmd += ["--rate", f"{rate:g}", "--latency-ms", str(latency_ms)]
        super().__init__(cmd, env, "sandbox")
        self.url = f"http://127.0.0.1:{self.port}/api/v2"
        self.http = requests.Session()
        wait_until(lambda: self.alive() and self._answers(), 30, "sandbox start")

    def _answers(self) -> bool:
        try:
            return self.http.get(self.url + "/_sandbox/stats", timeout=2).ok
        except requests.ConnectionError:
            return False

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


class Worker(Process):
    """A real `celery -A project worker` with the given pool and concurrency."""

    def __init__(self, env: dict[str, str], pool: str, concurrency: int) -> None:
        self.pool, self.concurrency = pool, concurrency
        self.hostname = f"bench-{uuid.uuid4().hex[:8]}@localhost"
        cmd = [PY, "-m", "celery", "-A", "project", "worker", "--pool", pool,
               "--concurrency", str(concurrency), "--hostname", self.hostname,
               "--loglevel", "INFO", "--without-gossip", "--without-mingle",
               "--without-heartbeat"]  # fmt: skip
        super().__init__(cmd, env, "worker", cwd=WORKER_ROOT)
        wait_until(lambda: self.alive() and "ready." in self.output(), 60, "worker start")


class Fleet:
    """`processes` identical workers, measured together (CPU and peak memory are sums)."""

    def __init__(self, env: dict[str, str], pool: str, concurrency: int, processes: int) -> None:
        self.workers: list[Worker] = []
        try:
            for _ in range(processes):
                self.workers.append(Worker(env, pool, concurrency))
        except BaseException:
            self.stop()
            raise
        self.label = label(pool, concurrency, processes)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(worker.pid) for worker in self.workers)

    def peak_rss_mb(self) -> float:
        return sum(peak_rss_mb(worker.pid) for worker in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def label(pool: str, concurrency: int, processes: int = 1) -> str:
    one = f"{pool} × {concurrency}"
    return one if processes == 1 else f"{processes} workers of {one}"


class Web(Process):
    """gunicorn serving the project, as the Procfile's `web` does."""

    def __init__(self, env: dict[str, str], workers: int = 2, threads: int = 4) -> None:
        self.port = free_port()
        cmd = [PY, "-m", "gunicorn", "project.wsgi", "--bind", f"127.0.0.1:{self.port}",
               "--workers", str(workers), "--threads", str(threads)]  # fmt: skip
        super().__init__(cmd, env, "web")
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: self.alive() and self._answers(), 60, "gunicorn start")

    def _answers(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=2).ok
        except requests.ConnectionError:
            return False
