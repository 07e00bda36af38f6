"""Start a local, disk-less redis-server when nothing answers at the given URL (make run/test)."""

import shutil
import subprocess
import sys
import time
from urllib.parse import urlsplit

import redis


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def main(url: str) -> int:
    if answers(url):
        return 0
    parts = urlsplit(url)
    if parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        print(f"Redis at {url} does not answer, and it is not local: start it first.")
        return 1
    server = shutil.which("redis-server")
    if not server:
        print("redis-server is not on the PATH: install it (apt-get install redis-server).")
        return 1
    port = str(parts.port or 6379)
    print(f"Starting a local redis-server on port {port} (nothing kept on disk).")
    subprocess.run(  # noqa: S603 (a fixed argument list: the redis-server found on the PATH)
        [
            server,
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            port,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    for _ in range(50):
        if answers(url):
            return 0
        time.sleep(0.1)
    print("redis-server did not come up.")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
