"""Real Postgres databases and Redis servers for tests, one per test session."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from shared.cli.embedded_redis import free_port, redis_answers, redis_executable
from shared.core import migrate

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def create_database(admin_url: str = POSTGRES_ADMIN_URL) -> str:
    """A new, empty Postgres database; returns its SQLAlchemy URL."""
    name = f"ner_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


@contextmanager
def migrated_database() -> Iterator[str]:
    """A fresh Postgres database migrated to head, dropped afterwards."""
    url = create_database()
    migrate.upgrade(url)
    try:
        yield url
    finally:
        drop_database(url)


def drop_database(url: str, admin_url: str = POSTGRES_ADMIN_URL) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class RedisServer:
    """A redis-server of the test session's own, on a free port; can be stopped and started again."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_executable(),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                # Persist queued tasks, so a restart mid-job loses nothing (as a production Redis would).
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(200):
            if redis_answers(self.url, timeout=0.1):
                return
            if self.process.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"], check=False)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
