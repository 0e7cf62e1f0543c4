"""Schemathesis against the gateway's own OpenAPI document: no 5xx, every answer as documented.

The gateway runs as a real process with auth on, a real (tiny) model, and a database and Redis
database of its own: the fuzzer creates jobs, uploads and (refused) training runs, and may try to
activate model versions, none of which may touch what other tests see.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from sqlalchemy.orm import Session

from gateway.app import create_app
from shared.core import migrate
from shared.core.db import make_engine
from shared.core.redis import redis_client
from shared.keys import service as keys
from tests.support.processes import start_gateway, wait_until
from tests.support.services import RedisServer, create_database, drop_database

EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def fuzzed_gateway(
    service_env: dict[str, str],
    redis_server: RedisServer,
    tiny_model_dir: Path,
    log_dir: Path,
    tmp_path_factory,
) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    database = create_database()
    migrate.upgrade(database)
    engine = make_engine(database)
    with Session(engine) as session:
        admin = keys.create_key(session=session, scope="admin", name="schemathesis").plaintext
    engine.dispose()
    broker = redis_server.url.rsplit("/", 1)[0] + "/7"  # tasks the fuzzer causes are never consumed
    state = tmp_path_factory.mktemp("fuzz-state")
    env = {
        **service_env,
        "NER_DATABASE_URL": database,
        "NER_REDIS_URL": broker,
        "NER_STATE_DIR": str(state),
        "NER_ARTIFACTS_DIR": str(state / "models"),
        "NER_DATA_ROOTS": str(state / "data"),
        "NER_AUTH": "on",
        "NER_MODEL": str(tiny_model_dir),
        "NER_PREDICT_MAX_CHARS": "2000",
        "NER_PREDICT_BATCH_MAX_TEXTS": "8",
        "NER_JOB_JSON_MAX_BYTES": "20000",
        "NER_RATE_LIMIT_PER_MINUTE": "100000",
    }
    proc, url = start_gateway(env, log_dir)
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 120, "the gateway's model", proc)
        yield url, admin
    finally:
        proc.stop()
        redis_client(broker).flushdb()
        drop_database(database)
    assert admin not in proc.log()


# The document the gateway serves at /openapi.json, built from the same app factory (loaded at
# collection, so every operation is its own test); the cases are sent to the live process.
schema = schemathesis.openapi.from_dict(create_app().openapi())

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure reproduces
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_its_own_schema(case, fuzzed_gateway: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    url, admin = fuzzed_gateway
    case.call_and_validate(base_url=url, headers={"X-API-Key": admin}, checks=CHECKS, timeout=60)
