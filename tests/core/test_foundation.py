"""Foundation: migrations on both databases, settings that fail loudly, the `ner` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.cli.embedded_redis import free_port
from shared.core import migrate
from shared.core.config import Settings
from shared.core.db import make_engine
from shared.core.tables import Base
from tests.support.processes import REPO_ROOT, ServiceProcess, ner, wait_until
from tests.support.services import create_database, drop_database

TABLES = {
    "api_keys", "jobs", "job_documents", "job_results", "job_chunks",
    "training_runs", "training_epochs", "model_versions",
}  # fmt: skip


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _drift(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()


def test_postgres_round_trip_and_no_drift() -> None:
    url = create_database()
    try:
        migrate.upgrade(url)
        assert _tables(url) == TABLES
        migrate.downgrade(url, "base")
        assert _tables(url) == set()
        migrate.upgrade(url)
        assert _tables(url) == TABLES
        assert _drift(url) == []
    finally:
        drop_database(url)


def test_sqlite_round_trip_and_no_drift(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ner.db'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    assert _tables(url) == set()
    migrate.upgrade(url)
    assert _tables(url) == TABLES
    assert _drift(url) == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db.example:5432/ner", "postgresql+psycopg://u:p@db.example:5432/ner"),
        ("postgresql://u@host/db", "postgresql+psycopg://u@host/db"),
        ("postgresql+psycopg://u@host/db", "postgresql+psycopg://u@host/db"),
    ],
)
def test_hosted_postgres_urls_work_as_given(given: str, expected: str) -> None:
    assert Settings(database_url=given).database_url == expected


def _ner(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ner(*args), env={**os.environ, **(env or {})}, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NER_DATABASE_URL", "mysql://root@localhost/ner", "only postgresql:// and sqlite://"),
        ("NER_DATABASE_URL", "::not a url::", "not a database URL"),
        ("NER_REDIS_URL", "http://localhost:6379", "must start with redis://"),
        ("NER_TRAIN_LOSS", "hinge", "'ce', 'weighted_ce', 'focal' or 'mom'"),
        ("NER_CHUNK_MAX_CHARS", "-5", "greater than or equal to 1"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line(variable: str, value: str, message: str) -> None:
    result = _ner("db", "upgrade", env={variable: value})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("NER_")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{variable}:") and message in lines[0], result.stderr


def test_db_upgrade_command_migrates_sqlite(tmp_path: Path) -> None:
    # NER_DATABASE_URL emptied: an earlier test's service_env may have put Postgres in os.environ.
    result = _ner("db", "upgrade", env={"NER_STATE_DIR": str(tmp_path), "NER_DATABASE_URL": ""})
    assert result.returncode == 0, result.stderr
    assert _tables(f"sqlite:///{tmp_path / 'ner.db'}") == TABLES


def test_up_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _ner("up", env={"NER_STATE_DIR": str(tmp_path), "NER_PORT": str(port)})
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr


@pytest.mark.slow
def test_up_runs_the_whole_stack_on_embedded_defaults(tmp_path: Path, log_dir: Path) -> None:
    """SQLite file, no Redis at NER_REDIS_URL: `ner up` starts an embedded one and everything answers."""
    port, flower_port = free_port(), free_port()
    env = {
        "NER_STATE_DIR": str(tmp_path / "state"),
        "NER_PORT": str(port),
        "NER_FLOWER_PORT": str(flower_port),
        "NER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "NER_DATABASE_URL": "",
        "NER_MODEL": "",
    }
    stack = ServiceProcess("ner-up", ner("up"), env, log_dir)
    try:
        wait_until(lambda: "worker" in stack.log() and " ready." in stack.log(), 180, "the worker", stack)

        def ready() -> bool:
            try:
                return (
                    httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()["checks"]["broker"] == "ok"
                )
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        wait_until(ready, 120, "the gateway's /readyz", stack)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        assert (tmp_path / "state" / "ner.db").exists()
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=2).status_code == 200,
            60, "Flower", stack,
        )  # fmt: skip
        assert "embedded one" in stack.log()
        os.killpg(stack.pid, signal.SIGINT)
        stack.process.wait(timeout=60)
        assert not stack.alive()
    finally:
        stack.stop()
    for name in ("gateway", "worker", "trainer", "flower"):
        assert f"{name} " in stack.log(), f"no {name} output in the stack log"
    assert sys.executable
