"""Shared fixtures: a real Postgres database and a real Redis server per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.core.config import get_settings
from shared.core.db import make_engine, reset_engine
from tests.support.services import RedisServer, migrated_database

TEST_ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# Before anything imports torch: OpenMP threads that spin at barriers make small forward passes
# ~10x slower on the busy shared cores tests run on (see shared/predict/engine/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests start from an empty registry unless they seed it: no shipped model as version 1 (in-process
# and in every child process); tests of the shipped model set NER_DEFAULT_MODEL themselves.
os.environ.setdefault("NER_DEFAULT_MODEL", "none")
# Likewise NER_MODEL stays outside the registry (as before issue 20) unless a test imports it.
os.environ.setdefault("NER_MODEL_IMPORT", "false")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database, migrated to head, dropped after the session."""
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test session's own (tests may stop and start it)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_env(
    pg_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """NER_* variables pointing at the session's database, Redis and a temporary state folder.

    Applied to os.environ too, so in-process code and child processes see the same service.
    """
    state = tmp_path_factory.mktemp("state")
    env = {
        "NER_DATABASE_URL": pg_url,
        "NER_REDIS_URL": redis_server.url,
        "NER_STATE_DIR": str(state),
        "NER_ARTIFACTS_DIR": str(state / "models"),
        "NER_DATA_ROOTS": f"{state / 'data'},{get_settings().conll_dir}",
        "NER_AUTH": "off",
        "NER_MODEL_POLL_SECONDS": "0.5",
        "NER_LOG_LEVEL": "INFO",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    _reload_settings()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _reload_settings()


def _reload_settings() -> None:
    from shared.core.celery_app import celery_app, configure

    get_settings.cache_clear()
    reset_engine()
    configure(celery_app, get_settings())


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(pg_engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test (commits become savepoints)."""
    connection = pg_engine.connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()
    transaction.rollback()
    connection.close()


@pytest.fixture(scope="session")
def log_dir() -> Path:
    """Where child processes' logs and screenshots go (kept as CI artefacts)."""
    TEST_ARTIFACTS.mkdir(exist_ok=True)
    return TEST_ARTIFACTS


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A real fine-tuned token-classification checkpoint (bundled encoder, ~300 CoNLL sentences).

    Built once and cached under .ner/test-cache/ by a hash of the builder's source.
    """
    from tests.support.tiny_model import cached_tiny_model

    return cached_tiny_model(get_settings().conll_dir)


@pytest.fixture
def auth_on(service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """``service_env`` with API keys enforced (NER_AUTH=on) for in-process apps; the env to pass to
    child processes is yielded."""
    from tests.support.auth import settings_env

    with settings_env({"NER_AUTH": "on"}):
        yield {**service_env, "NER_AUTH": "on"}


@pytest.fixture
def api_key(service_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """A factory: ``api_key("jobs")`` creates a real key with that scope and returns its plaintext."""
    from tests.support.auth import create_key

    return create_key
