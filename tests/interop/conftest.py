"""Label Studio for the interop tests: its own virtualenv, cached outside the repository.

``pip install label-studio`` takes minutes and its first start migrates a database for minutes
more, too long for every run of the suite on two cores. So the tests marked ``label_studio`` run
only when the virtualenv is cached (``NER_TEST_LABEL_STUDIO_VENV``, default
``~/.cache/ner-tests/label-studio``) and are skipped with the way to create it otherwise:
``NER_TEST_INSTALL_LABEL_STUDIO=1`` installs it on the next run (once). A migrated data folder is
kept beside it after the first start, so later sessions start Label Studio in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select, update

from shared.cli.embedded_redis import free_port
from shared.core.db import session_scope
from shared.core.tables import ModelVersion, TrainingRun, VersionStatus
from tests.support.processes import ServiceProcess, wait_until

VENV = Path(os.environ.get("NER_TEST_LABEL_STUDIO_VENV", "~/.cache/ner-tests/label-studio")).expanduser()
READY = VENV / ".ner-ready"  # written after a complete install: a half-installed venv is not used
DATA_TEMPLATE = VENV.parent / "label-studio-data"  # a migrated data folder with the test user
USER, PASSWORD = "ner-tests@example.com", "ner-tests-password"
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the test user's legacy API token


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "label_studio: needs Label Studio's cached virtualenv (see tests/interop/conftest.py)"
    )


@pytest.fixture(scope="module", autouse=True)
def restore_registry(service_env: dict[str, str]) -> Iterator[None]:
    """Leave the shared test database's versions, active version and runs as each module found them."""
    with session_scope() as session:
        versions = set(session.scalars(select(ModelVersion.version)))
        runs = set(session.scalars(select(TrainingRun.id)))
        active = session.scalar(
            select(ModelVersion.version).where(ModelVersion.status == VersionStatus.active)
        )
    yield
    with session_scope() as session:
        session.execute(delete(ModelVersion).where(ModelVersion.version.not_in(versions or {-1})))
        session.execute(
            delete(TrainingRun).where(TrainingRun.id.not_in(runs)) if runs else delete(TrainingRun)
        )
        session.flush()
        if active is not None:
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.status == VersionStatus.active, ModelVersion.version != active)
                .values(status=VersionStatus.retired)
            )
            session.flush()
            session.execute(
                update(ModelVersion).where(ModelVersion.version == active).values(status=VersionStatus.active)
            )


def install_label_studio(venv: Path = VENV) -> None:
    """Create the virtualenv and install Label Studio into it (minutes, once)."""
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "label-studio"], check=True)
    READY.touch()


@pytest.fixture(scope="session")
def label_studio_venv() -> Path:
    if not READY.exists():
        if os.environ.get("NER_TEST_INSTALL_LABEL_STUDIO") != "1":
            pytest.skip(
                f"Label Studio is not installed at {VENV}; run the tests once with "
                "NER_TEST_INSTALL_LABEL_STUDIO=1 to install it there (about 4 minutes, cached after)"
            )
        install_label_studio()
    return VENV


@dataclass(frozen=True)
class LabelStudio:
    url: str
    token: str

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=120)


@pytest.fixture(scope="session")
def label_studio(
    label_studio_venv: Path, tmp_path_factory: pytest.TempPathFactory, log_dir: Path
) -> Iterator[LabelStudio]:
    """A real Label Studio server of this session's own, with a user whose API token is known."""
    data = tmp_path_factory.mktemp("label-studio") / "data"
    fresh = not DATA_TEMPLATE.exists()
    if not fresh:
        shutil.copytree(DATA_TEMPLATE, data)
    port = free_port()
    env = {
        # The ML backend (this service) runs on 127.0.0.1: Label Studio refuses local addresses by default.
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "COLLECT_ANALYTICS": "false",
    }
    argv = [
        str(label_studio_venv / "bin" / "label-studio"), "start", "--no-browser", "--port", str(port),
        "--data-dir", str(data), "--username", USER, "--password", PASSWORD, "--user-token", TOKEN,
        "--enable-legacy-api-token",
    ]  # fmt: skip
    proc = ServiceProcess("label-studio", argv, env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 600 if fresh else 180, "Label Studio to start", proc)
    yield LabelStudio(url=url, token=TOKEN)
    proc.stop()
    if fresh and not DATA_TEMPLATE.exists():
        shutil.copytree(data, DATA_TEMPLATE)  # migrated once: later sessions start in seconds
