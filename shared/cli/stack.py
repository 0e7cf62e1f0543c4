"""``ner up``: the gateway, an inference worker, the trainer and Flower as child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m"]
RESET = "\033[0m"


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None


def port_is_taken(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def ner_command(*args: str) -> list[str]:
    """The argv that runs ``ner ARGS`` with this interpreter (works without the script on PATH)."""
    return [sys.executable, "-m", "shared.cli", *args]


def _pump(child: Child, colour: str, width: int) -> None:
    assert child.process is not None and child.process.stdout is not None
    prefix = (
        f"{colour}{child.name:<{width}} |{RESET} " if sys.stdout.isatty() else f"{child.name:<{width}} | "
    )
    for raw in iter(child.process.stdout.readline, b""):
        sys.stdout.write(prefix + raw.decode("utf-8", "replace"))
        sys.stdout.flush()


def run_children(children: Sequence[Child], env: dict[str, str]) -> int:
    """Run every child with prefixed output until one exits or Ctrl-C; then stop them all."""
    width = max(len(child.name) for child in children)
    for index, child in enumerate(children):
        child.process = subprocess.Popen(
            child.argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )
        threading.Thread(
            target=_pump, args=(child, COLOURS[index % len(COLOURS)], width), daemon=True
        ).start()

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    exit_code = 0
    while not stop.is_set():
        for child in children:
            assert child.process is not None
            code = child.process.poll()
            if code is not None:
                print(f"{child.name} exited with status {code}; stopping the stack", file=sys.stderr)
                exit_code = code or 1
                stop.set()
                break
        stop.wait(0.5)
    stop_children(children)
    return exit_code


def stop_children(children: Sequence[Child], grace_s: float = 15.0) -> None:
    """SIGTERM every child (Celery finishes its current task), then SIGKILL what is left."""
    for child in children:
        if child.process and child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
