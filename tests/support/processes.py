"""Starting the service's parts as real processes (``python -m shared.cli ...``) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from shared.cli.embedded_redis import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """A child process whose output goes to a log file, readable when a test fails."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker's pool children too)."""
        if self.alive():
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def ner(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


def wait_until(predicate, timeout: float, what: str, process: ServiceProcess | None = None) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; fail with the process's log when it times out or dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and not process.alive():
            raise AssertionError(f"{process.name} died while waiting for {what}:\n{process.log()[-5000:]}")
        time.sleep(0.1)
    tail = f"\n{process.name} log:\n{process.log()[-5000:]}" if process else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")


def start_gateway(env: Mapping[str, str], log_dir: Path, timeout: float = 120) -> tuple[ServiceProcess, str]:
    """``ner serve`` on a free port; returns the process and its base URL once /healthz answers."""
    port = free_port()
    proc = ServiceProcess("gateway", ner("serve", "--port", str(port)), env, log_dir)
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout, "the gateway's /healthz", proc)
    return proc, base_url


def start_worker(
    env: Mapping[str, str], log_dir: Path, queue: str = "inference", timeout: float = 120
) -> ServiceProcess:
    """``ner worker`` (queue inference) or ``ner trainer`` (queue training), ready to consume."""
    command = "worker" if queue == "inference" else "trainer"
    proc = ServiceProcess(command, ner(command), env, log_dir)
    wait_until(lambda: " ready." in proc.log(), timeout, f"the {command} to be ready", proc)
    return proc
