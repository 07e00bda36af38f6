"""`make run` and `make urls`: run the Procfile's processes, say where they are once they
are ready, and stop them all cleanly on Ctrl-C.

    python scripts/run.py honcho start web worker beat sandbox   # make run
    python scripts/run.py --urls                                 # make urls

The processes' log lines pass through. Once web answers (GET /healthz), a worker answers a
ping and the sandbox (when started) accepts connections, the URLs and the development login
are printed. On Ctrl-C, honcho stops every process; their shutdown chatter is dropped and one
line says that everything stopped, with exit status 0.

On a terminal the script takes the foreground for its own process group, so that Ctrl-C
reaches it and honcho (whose processes run in sessions of their own), not `make`, which
would report the interrupt as "Error 130".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

READY_TIMEOUT_SECONDS = 180
POLL_SECONDS = 0.5


def web_address() -> str:
    """host:port of the web process, as a browser on this machine reaches it."""
    host, _, port = os.environ.get("WEB_BIND", "127.0.0.1:8000").rpartition(":")
    return f"{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}"  # noqa: S104


def sandbox_port() -> int:
    return int(os.environ.get("SANDBOX_PORT", "8765"))


def banner(with_sandbox: bool) -> str:
    web = f"http://{web_address()}"
    lines = [
        "",
        f"  Admin          {web}/admin/     login: admin / admin (development only)",
        f"  Ops dashboard  {web}/ops/",
        f"  JSON API       {web}/api/collections/   (token: manage.py create_api_token admin)",
    ]
    if with_sandbox:
        lines.append(f"  Sandbox        http://127.0.0.1:{sandbox_port()}/api/v2")
    lines += ["  `make urls` prints this again; Ctrl-C stops everything.", ""]
    return "\n".join(lines)


# --- readiness ----------------------------------------------------------------------------


def web_answers() -> bool:
    try:
        url = f"http://{web_address()}/healthz"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def worker_answers() -> bool:
    from project.celery import app

    try:
        return bool(app.control.ping(timeout=1))
    except Exception:  # the broker not up yet
        return False


def sandbox_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", sandbox_port()), timeout=1):
            return True
    except OSError:
        return False


def waiting_for(with_sandbox: bool) -> list[str]:
    """The processes not ready yet."""
    checks = {"web": web_answers, "worker": worker_answers}
    if with_sandbox:
        checks["sandbox"] = sandbox_answers
    return [name for name, ready in checks.items() if not ready()]


# --- running ------------------------------------------------------------------------------


@contextlib.contextmanager
def foreground() -> Iterator[bool]:
    """Make this process group the terminal's foreground group while running; True if so."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield False
        return
    try:
        previous = os.getpgrp()
        if os.tcgetpgrp(tty) != previous:  # started in the background: leave the terminal be
            yield False
            return
        os.setpgid(0, 0)
        _set_foreground(tty, os.getpgrp())
        try:
            yield True
        finally:
            _set_foreground(tty, previous)
    finally:
        os.close(tty)


def _set_foreground(tty: int, group: int) -> None:
    """tcsetpgrp from a group not (or no longer) in the foreground: SIGTTOU must be ignored."""
    handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(tty, group)
    finally:
        signal.signal(signal.SIGTTOU, handler)


class Runner:
    """honcho, its output passed through until a stop is asked for."""

    def __init__(self, command: list[str], in_foreground: bool) -> None:
        self.with_sandbox = "sandbox" in command
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.in_foreground = in_foreground
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # log lines as they come, through a pipe
        self.process = subprocess.Popen(  # noqa: S603 (the Makefile's own command line)
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )

    def stop(self, signum: int, frame: FrameType | None) -> None:
        """Ctrl-C on the terminal reached honcho too; any other signal is passed on."""
        self.stopping.set()
        if not (self.in_foreground and signum == signal.SIGINT):
            self.process.send_signal(signum)

    def say(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def announce_when_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self.stopping.is_set() and self.process.poll() is None:
            missing = waiting_for(self.with_sandbox)
            if not missing:
                self.say(banner(self.with_sandbox))
                return
            if time.monotonic() > deadline:
                self.say(
                    f"\n  Still not ready after {READY_TIMEOUT_SECONDS}s: {', '.join(missing)}\n"
                )
                return
            time.sleep(POLL_SECONDS)

    def pass_output(self) -> int:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not self.stopping.is_set():
                with self.lock:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
        return self.process.wait()


def run(command: list[str]) -> int:
    with foreground() as in_foreground:
        runner = Runner(command, in_foreground)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, runner.stop)
        threading.Thread(target=runner.announce_when_ready, daemon=True).start()
        returncode = runner.pass_output()
    if runner.stopping.is_set():
        names = command[command.index("start") + 1 :] if "start" in command else command
        back = "\r" if sys.stdout.isatty() else ""  # over the terminal's "^C"
        print(f"{back}Everything stopped ({', '.join(names)}).")
        return 0
    print(f"A process exited (honcho: {returncode}), so every process was stopped; see above.")
    return returncode or 1


def urls() -> int:
    with_sandbox = not os.environ.get("UTILITYAPI_TOKEN")
    print(banner(with_sandbox))
    if not web_answers():
        print(f"  Nothing answers at http://{web_address()}/ now: `make run` starts it.\n")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--urls"]:
        return urls()
    if not argv:
        sys.exit(__doc__)
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
