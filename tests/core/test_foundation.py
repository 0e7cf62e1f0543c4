"""Foundation: migrations on both databases, settings that fail loudly, the `ner` command."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import redis
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
    "training_runs", "training_epochs", "model_versions", "training_uploads",
    "job_callback_attempts", "job_reruns", "shadow_configs", "shadow_stats", "shadow_samples",
    "artifact_chunks",
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


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("NER_DATABASE_URL", "mysql://ner:S3cretPW@db/ner", "S3cretPW"),
        ("NER_DATABASE_URL", "mysql://ner:p@ss:w0rd@db/ner", "w0rd"),  # an @ inside the password
        ("NER_DATABASE_URL", "postgresql://ner:S3cretPW@[::1", "S3cretPW"),  # unparsable
        ("NER_REDIS_URL", "http://:R3disPW@cache:6379/0", "R3disPW"),
        ("NER_DATABASE_URL", "mysql://db/ner?password=Q5ecret", "Q5ecret"),
    ],
)
def test_bad_setting_never_echoes_a_password(variable: str, value: str, secret: str) -> None:
    result = _ner("db", "upgrade", env={variable: value})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("NER_")]
    assert len(lines) == 1 and lines[0].startswith(f"{variable}:"), result.stderr
    assert secret not in result.stderr + result.stdout
    assert "***" in lines[0] or "not a database URL" in lines[0], lines[0]


def test_a_bad_secret_setting_is_named_but_not_shown() -> None:
    from pydantic import ValidationError

    from shared.core.config import describe_errors

    with pytest.raises(ValidationError) as caught:
        Settings(flower_password=["not", "a", "Str1ngSecret"])  # type: ignore[arg-type]
    line = describe_errors(caught.value)
    assert line.startswith("NER_FLOWER_PASSWORD:") and "Str1ngSecret" not in line and "hidden" in line


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
                # Without a key /readyz names only the failing components (no model here).
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
                return "failing" in answer and "broker" not in answer["failing"]
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
        # Issue 19: the embedded Redis has a password that is never printed, the outdated bundled
        # server is named, and the state is the user's alone.
        assert "redis://:***@127.0.0.1:" in stack.log()
        assert "predates the releases that fixed" in stack.log()
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "state" / "ner.db").stat().st_mode) == 0o600
        # The trainer (a worker on its own queue) starts slowest: all four have spoken before the stop.
        wait_until(lambda: "trainer " in stack.log(), 120, "the trainer", stack)
        os.killpg(stack.pid, signal.SIGINT)
        stack.process.wait(timeout=60)
        assert not stack.alive()
    finally:
        stack.stop()
    for name in ("gateway", "worker", "trainer", "flower"):
        assert f"{name} " in stack.log(), f"no {name} output in the stack log"
    assert sys.executable


# --- the local stack is its user's alone (issue 19) ----------------------------------------------

OTHER_USER = "ner-probe"


def _other_user() -> str:
    """A local user other than the service's (root here); created when missing."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root, useradd and runuser to act as another local user")
    if subprocess.run(["id", OTHER_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", OTHER_USER], check=True)
    return OTHER_USER


def _as(user: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv], input=stdin, capture_output=True, text=True, timeout=30
    )


# A raw RESP client for the system python3, so the other user needs nothing of this repository.
_RESP_CLIENT = """
import socket, sys
port = int(sys.argv[1])
replies = []
for command in sys.argv[2:]:
    parts = command.split()
    wire = f"*{len(parts)}\\r\\n" + "".join(f"${len(p)}\\r\\n{p}\\r\\n" for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(wire.encode())
        replies.append(sock.recv(4096).decode(errors="replace").strip())
print("\\n".join(replies))
"""


def test_another_local_user_can_neither_use_the_embedded_redis_nor_read_the_state(
    tmp_path: Path,
) -> None:
    from shared.cli.embedded_redis import start_redis
    from shared.cli.main import private_state_dir

    user = _other_user()
    # A parent every user may enter (pytest's own tmp folder is root's alone, which would hide
    # everything whatever the service did).
    base = Path(tempfile.mkdtemp(prefix="ner-state-", dir="/tmp"))
    base.chmod(0o755)
    state = base / "state"
    umask = os.umask(0o022)  # a typical login umask; private_state_dir must not depend on it
    try:
        os.umask(0o022)
        private_state_dir(state)
        migrate.upgrade(f"sqlite:///{state / 'ner.db'}")
        (state / "celerybeat-schedule").write_text("schedule")  # as a child of `ner up` would
        process, url = start_redis(state / "redis")
    finally:
        os.umask(umask)
    port = url.rsplit(":", 1)[1].split("/")[0]
    try:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("ner.db", "celerybeat-schedule", "redis/redis.conf"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        for argv in (
            ["ls", str(state)],
            ["cat", str(state / "ner.db")],
            ["cat", str(state / "redis/redis.conf")],
        ):
            denied = _as(user, *argv)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, (argv, denied)

        # Without the password nothing runs, least of all the file-writing CONFIG SET dir + SAVE.
        target = base / "written-by-redis"
        probe = _as(
            user, "python3", "-c", _RESP_CLIENT, port,
            f"CONFIG SET dir {base}", "CONFIG SET dbfilename written-by-redis", "SAVE", "RPUSH inference x",
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        replies = probe.stdout.splitlines()
        assert len(replies) == 4 and all(r.startswith("-") for r in replies), replies  # errors only
        assert all("NOAUTH" in r or "unknown command 'CONFIG'" in r for r in replies), replies
        assert "NOAUTH" in replies[3]  # even queueing a task needs the password
        assert not target.exists()
        # With the password (as the service's own processes have it): CONFIG, MODULE, DEBUG are gone.
        client = redis.Redis.from_url(url)
        for command in (("CONFIG", "SET", "dir", str(base)), ("MODULE", "LIST"), ("DEBUG", "SLEEP", "0")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def test_an_outdated_bundled_redis_is_named_and_a_system_one_preferred() -> None:
    from shared.cli.embedded_redis import (
        choose_executable,
        lacks_security_fixes,
        redis_executable,
        server_version,
    )

    bundled = server_version(redis_executable())
    assert bundled is not None
    assert lacks_security_fixes((6, 2, 14)) and lacks_security_fixes((7, 0, 15))
    assert not lacks_security_fixes((6, 2, 20)) and not lacks_security_fixes((7, 4, 6))
    system = shutil.which("redis-server")
    if system is None:
        pytest.skip("no system redis-server installed")
    chosen, notes = choose_executable()
    assert chosen == system
    if lacks_security_fixes(bundled):
        assert any("bundled redis-server" in note and "system redis-server instead" in note for note in notes)
    # Without a system one, the bundled one runs and the user is told to install one.
    chosen, notes = choose_executable(system="")
    assert chosen == redis_executable()
    if lacks_security_fixes(bundled):
        assert any("install a system redis-server" in note for note in notes)


def test_a_new_sqlite_database_is_its_users_alone_whatever_the_umask(tmp_path: Path) -> None:
    """`ner serve` or `ner worker` alone (no `ner up` umask): the SQLite file is still created 0600."""
    previous = os.umask(0o022)
    try:
        migrate.upgrade(f"sqlite:///{tmp_path / 'fresh' / 'ner.db'}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700
    for path in (tmp_path / "fresh").iterdir():  # ner.db and SQLite's -wal / -shm beside it
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
