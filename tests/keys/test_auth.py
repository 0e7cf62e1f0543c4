"""API keys: hashed storage, the ``ner keys`` command, scopes on routes, rate limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.app import create_app
from gateway.deps import Principal, require_scope
from shared.cli import keys as keys_cli
from shared.cli import main
from shared.cli.embedded_redis import free_port
from shared.core.config import get_settings
from shared.core.db import get_sessionmaker
from shared.core.tables import ApiKey, ApiKeyScope
from shared.keys import ratelimit
from shared.keys import service as keys
from tests.support.auth import settings_env

SCOPES = ["predict", "jobs", "train", "admin"]


# --- the key service ------------------------------------------------------------------------


def test_created_key_is_stored_only_as_a_slow_salted_hash(db_session: Session) -> None:
    created = keys.create_key(session=db_session, scope="jobs", name="ci")
    row = db_session.get(ApiKey, created.id)
    assert row is not None
    assert created.plaintext.startswith(created.prefix + "_") and row.prefix == created.prefix
    secret = created.plaintext[len(created.prefix) + 1 :]
    assert len(secret) >= 40
    assert secret not in row.key_hash and created.plaintext not in row.key_hash
    scheme, n, *_ = row.key_hash.split("$")
    assert scheme == "scrypt" and int(n) >= 2**14
    # Salted: the same plaintext hashes differently each time.
    assert keys.hash_key(created.plaintext) != keys.hash_key(created.plaintext)


def test_authenticate_accepts_only_the_exact_live_key(db_session: Session) -> None:
    created = keys.create_key(session=db_session, scope="predict")
    found = keys.authenticate(session=db_session, plaintext=created.plaintext)
    assert found is not None and found.id == created.id and found.scope == ApiKeyScope.predict
    # Same prefix, other secret (a forged key) and near misses.
    forged = created.prefix + "_" + "A" * 43
    for candidate in (forged, created.plaintext[:-1], created.plaintext + "x", created.prefix, ""):
        assert keys.authenticate(session=db_session, plaintext=candidate) is None, candidate
    keys.revoke_key(session=db_session, ident=created.prefix)
    assert keys.authenticate(session=db_session, plaintext=created.plaintext) is None


@pytest.mark.parametrize(
    "junk",
    ["ner_", "ner_zzzzzzzz_abc", "ner_12345678", "Bearer x", "x" * 10_000, "ner_12345678_" + "a" * 500, "é"],
)
def test_malformed_keys_are_refused_before_any_lookup(db_session: Session, junk: str) -> None:
    assert keys.authenticate(session=db_session, plaintext=junk) is None


def test_revoke_by_id_or_prefix_and_unknown_key(db_session: Session) -> None:
    first = keys.create_key(session=db_session, scope="train")
    second = keys.create_key(session=db_session, scope="train")
    assert keys.revoke_key(session=db_session, ident=str(first.id)).revoked_at is not None
    assert keys.revoke_key(session=db_session, ident=second.prefix).revoked_at is not None
    with pytest.raises(keys.KeyNotFound):
        keys.revoke_key(session=db_session, ident="ner_00000000")
    with pytest.raises(keys.KeyNotFound):
        keys.revoke_key(session=db_session, ident="../../etc/passwd")


# --- the command line -----------------------------------------------------------------------


def test_ner_keys_create_list_revoke(service_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--scope", "jobs", "--name", "nightly import"]) == 0
    out, err = capsys.readouterr()
    plaintext = out.strip()
    prefix = plaintext[: keys.PREFIX_LEN]
    assert prefix in err and "jobs" in err and plaintext not in err

    with get_sessionmaker()() as session:
        found = keys.authenticate(session=session, plaintext=plaintext)
    assert found is not None and found.scope == ApiKeyScope.jobs and found.name == "nightly import"

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert prefix in listing and "nightly import" in listing
    assert plaintext not in listing and plaintext[keys.PREFIX_LEN + 1 :] not in listing

    assert main(["keys", "revoke", prefix]) == 0
    assert prefix in capsys.readouterr().out
    with get_sessionmaker()() as session:
        assert keys.authenticate(session=session, plaintext=plaintext) is None

    assert main(["keys", "revoke", "ner_00000000"]) == 1
    assert "no API key" in capsys.readouterr().err


def test_ner_keys_create_refuses_unknown_scope(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--scope", "root"])
    assert exited.value.code == 2
    assert "invalid choice: 'root'" in capsys.readouterr().err


def test_ner_up_hook_prints_one_live_admin_key(
    auth_on: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env: dict[str, str] = {}
    stale = tmp_path / "metrics" / "counter_old-1.db"
    stale.parent.mkdir()
    stale.write_bytes(b"")
    with settings_env({"NER_METRICS_DIR": str(tmp_path / "metrics")}):
        keys_cli.prepare_local_stack(settings=get_settings(), env=env)
        first = capsys.readouterr().out.split()
        keys_cli.prepare_local_stack(settings=get_settings(), env=env)
        printed = capsys.readouterr().out
        second = printed.split()
    # The children's metrics folder, emptied for the new stack.
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "metrics") and not stale.exists()
    first_key = next(word for word in first if word.startswith(keys.KEY_PREFIX))
    second_key = next(word for word in second if word.startswith(keys.KEY_PREFIX))
    with get_sessionmaker()() as session:
        assert keys.authenticate(session=session, plaintext=first_key) is None  # revoked by the second
        live = keys.authenticate(session=session, plaintext=second_key)
        assert live is not None and live.scope == ApiKeyScope.admin
        names = session.scalars(
            select(ApiKey.id).where(ApiKey.name == keys_cli.LOCAL_ADMIN_NAME, ApiKey.revoked_at.is_(None))
        ).all()
        assert len(names) == 1
    # A ready-to-paste request with the live key, to this stack's /predict/.
    curl = next(line.strip() for line in printed.splitlines() if line.strip().startswith("curl "))
    assert f"X-API-Key: {second_key}" in curl and f":{get_settings().port}/predict/" in curl


def test_ner_up_hook_makes_no_key_with_auth_off(service_env: dict[str, str], capsys) -> None:  # type: ignore[no-untyped-def]
    keys_cli.prepare_local_stack(settings=get_settings(), env={})
    assert keys.KEY_PREFIX not in capsys.readouterr().out


# --- scopes on routes -----------------------------------------------------------------------


def _scoped_app() -> FastAPI:
    """The real app plus one probe route per scope, and rate-limited probes under /predict and /jobs."""
    app = create_app()
    for scope in SCOPES:

        def probe(principal: Principal = Depends(require_scope(scope))) -> dict[str, object]:
            return {"key_id": principal.key_id, "scope": principal.scope.value}

        app.add_api_route(f"/_probe/{scope}", probe, methods=["GET"])
    app.add_api_route("/predict/_probe", lambda: {"ok": True}, methods=["POST"],
                      dependencies=[Depends(require_scope("predict"))])  # fmt: skip
    app.add_api_route("/jobs/_probe", lambda: {"ok": True}, methods=["POST"],
                      dependencies=[Depends(require_scope("jobs"))])  # fmt: skip
    app.add_api_route("/jobs/_probe/{job_id}/cancel", lambda job_id: {"ok": True}, methods=["POST"],
                      dependencies=[Depends(require_scope("jobs"))])  # fmt: skip
    return app


@pytest.fixture
def client(auth_on: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(_scoped_app()) as http:
        yield http


def test_missing_and_wrong_keys_are_401_with_a_challenge(client, api_key) -> None:  # type: ignore[no-untyped-def]
    revoked = api_key("jobs")
    with get_sessionmaker()() as session:
        keys.revoke_key(session=session, ident=revoked[: keys.PREFIX_LEN])
    cases = {
        "no key": {},
        "empty key": {"X-API-Key": ""},
        "unknown key": {"X-API-Key": "ner_0123abcd_" + "x" * 43},
        "revoked key": {"X-API-Key": revoked},
        "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4="},
        "empty bearer": {"Authorization": "Bearer "},
    }
    for what, headers in cases.items():
        response = client.get("/_probe/jobs", headers=headers)
        assert response.status_code == 401, what
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), what
        assert "detail" in response.json(), what
        assert revoked not in response.text


def test_scopes_admit_their_own_routes_and_admin_everywhere(client, api_key) -> None:  # type: ignore[no-untyped-def]
    issued = {scope: api_key(scope) for scope in SCOPES}
    for key_scope, plaintext in issued.items():
        for route_scope in SCOPES:
            response = client.get(f"/_probe/{route_scope}", headers={"X-API-Key": plaintext})
            allowed = key_scope in (route_scope, "admin")
            assert response.status_code == (200 if allowed else 403), (key_scope, route_scope)
            if allowed:
                assert response.json()["scope"] == key_scope
            else:
                assert route_scope in response.json()["detail"]


def test_bearer_header_works_like_x_api_key(client, api_key) -> None:  # type: ignore[no-untyped-def]
    plaintext = api_key("train")
    response = client.get("/_probe/train", headers={"Authorization": f"Bearer {plaintext}"})
    assert response.status_code == 200
    key_id = response.json()["key_id"]
    response = client.get("/_probe/train", headers={"X-API-Key": plaintext})
    assert response.json()["key_id"] == key_id


def test_auth_off_admits_everyone_as_admin(service_env: dict[str, str]) -> None:
    assert get_settings().auth == "off"
    with TestClient(_scoped_app()) as http:
        response = http.get("/_probe/admin")
    assert response.status_code == 200 and response.json() == {"key_id": None, "scope": "admin"}


def test_auth_is_on_unless_switched_off_explicitly(service_env: dict[str, str]) -> None:
    import os

    saved = os.environ.pop("NER_AUTH")
    try:
        get_settings.cache_clear()
        assert get_settings().auth == "on"
    finally:
        os.environ["NER_AUTH"] = saved
        get_settings.cache_clear()


def test_public_routes_need_no_key(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json", "/"):
        response = client.get(path)
        assert response.status_code in (200, 503), path  # /readyz may be "not ready", never 401
    assert client.get("/metrics").status_code == 401


def test_openapi_declares_both_key_schemes(client: TestClient) -> None:
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schemes["ApiKey"]["description"],
    }
    assert schemes["Bearer"]["scheme"].lower() == "bearer"


# --- rate limits ----------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_refills(service_env: dict[str, str]) -> None:
    client = ratelimit.redis_client(service_env["NER_REDIS_URL"])
    bucket = ratelimit.TokenBucket(client, per_minute=120, burst=3)  # refills 2 tokens a second
    name = f"test-{time.monotonic_ns()}"
    decisions = [bucket.take(name) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after_s == 1
    assert bucket.take(f"{name}-other").allowed  # buckets are per key
    time.sleep(0.6)
    assert bucket.take(name).allowed
    assert not bucket.take(name).allowed


def test_rate_limit_fails_open_without_redis() -> None:
    decision = ratelimit.check_rate(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", key="nobody", per_minute=1, burst=1
    )
    assert decision.allowed


def test_predict_and_job_submission_answer_429_with_retry_after(auth_on: dict[str, str], api_key) -> None:  # type: ignore[no-untyped-def]
    with settings_env({"NER_RATE_LIMIT_PER_MINUTE": "6", "NER_RATE_LIMIT_BURST": "2"}):
        app = _scoped_app()
        predict_key, jobs_key, other_key = api_key("predict"), api_key("jobs"), api_key("predict")
        with TestClient(app) as http:
            predict = [http.post("/predict/_probe", headers={"X-API-Key": predict_key}) for _ in range(3)]
            assert [r.status_code for r in predict] == [200, 200, 429]
            assert 1 <= int(predict[-1].headers["Retry-After"]) <= 10
            assert "rate limit" in predict[-1].json()["detail"]
            # Another key has its own bucket.
            assert http.post("/predict/_probe", headers={"X-API-Key": other_key}).status_code == 200

            submit = [http.post("/jobs/_probe", headers={"X-API-Key": jobs_key}) for _ in range(3)]
            assert [r.status_code for r in submit] == [200, 200, 429]
            # Reading and acting on existing jobs is not limited.
            for _ in range(4):
                assert http.get("/_probe/jobs", headers={"X-API-Key": jobs_key}).status_code == 200
                cancel = http.post("/jobs/_probe/1/cancel", headers={"X-API-Key": jobs_key})
                assert cancel.status_code == 200
