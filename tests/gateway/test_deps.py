"""The key check and rate limit on the event loop: a key verified a moment ago costs no thread hop,
a revocation still takes effect, and the asyncio charge is the same bucket as the blocking one.

Real Postgres and Redis; the app in process (TestClient), its thread hops counted where every one
of them goes (``anyio.to_thread.run_sync``: FastAPI's ``def`` dependencies, ``run_in_threadpool``).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator

import anyio.to_thread
import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from gateway.app import create_app
from gateway.deps import Principal, require_scope
from shared.cli.embedded_redis import free_port
from shared.core.db import get_sessionmaker
from shared.core.redis import redis_client
from shared.core.tables import ApiKey, utcnow
from shared.keys import ratelimit
from shared.keys import service as keys
from tests.support.auth import settings_env


def _app() -> FastAPI:
    """The real app (middleware, body guard) plus an async predict-shaped route with a body."""
    app = create_app()

    async def probe(principal: Principal = Depends(require_scope("predict"))) -> dict[str, object]:
        return {"key_id": principal.key_id}

    app.add_api_route("/predict/_loop", probe, methods=["POST"])
    return app


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions sent to a worker thread while the test runs."""
    sent: list[str] = []
    original = anyio.to_thread.run_sync

    async def counting(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(getattr(func, "__qualname__", repr(func)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return sent


@pytest.fixture
def client(auth_on: dict[str, str]) -> Iterator[TestClient]:
    # A burst of 4: the fifth request of a key in a row is refused.
    with (
        settings_env({"NER_RATE_LIMIT_PER_MINUTE": "6", "NER_RATE_LIMIT_BURST": "4"}),
        TestClient(_app()) as http,
    ):
        yield http


def test_a_recently_verified_key_is_admitted_and_charged_without_a_thread_hop(
    client: TestClient, api_key, hops: list[str]
) -> None:  # type: ignore[no-untyped-def]
    plaintext = api_key("predict")
    first = client.post("/predict/_loop", json={}, headers={"X-API-Key": plaintext})
    assert first.status_code == 200, first.text
    assert hops, "the first check of a key reads the database in a thread"
    hops.clear()
    answers = [client.post("/predict/_loop", json={}, headers={"X-API-Key": plaintext}) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 10
    assert "rate limit of 6 requests a minute" in answers[-1].json()["detail"]
    assert hops == []  # key, settings, scope and bucket all on the loop, the 429 included
    assert answers[0].json() == {"key_id": first.json()["key_id"]}


def test_concurrent_first_requests_of_one_key_wait_for_one_check(
    auth_on: dict[str, str], api_key, hops: list[str]
) -> None:  # type: ignore[no-untyped-def]
    """A flood's first requests (or every request when the short cache expires) share one thread
    check: one query, at most one scrypt, not one each."""
    plaintext, wrong = api_key("predict"), api_key("predict")[: keys.PREFIX_LEN] + "_" + "y" * 43

    async def burst(key: str) -> list[int]:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            answers = await asyncio.gather(
                *(http.post("/predict/_loop", json={}, headers={"X-API-Key": key}) for _ in range(4))
            )
        return [answer.status_code for answer in answers]

    with settings_env({"NER_RATE_LIMIT_BURST": "10"}):
        assert asyncio.run(burst(plaintext)) == [200] * 4
        checks = [name for name in hops if name.startswith("authenticate_async")]
        assert len(checks) == 1, hops
        hops.clear()
        assert asyncio.run(burst(wrong)) == [401] * 4
        assert len([name for name in hops if name.startswith("authenticate_async")]) == 1, hops


def test_missing_and_wrong_keys_are_still_refused_on_the_loop_path(client: TestClient, api_key) -> None:  # type: ignore[no-untyped-def]
    plaintext = api_key("jobs")
    assert client.post("/predict/_loop", json={}).status_code == 401
    wrong = plaintext[: keys.PREFIX_LEN] + "_" + "x" * 43
    assert client.post("/predict/_loop", json={}, headers={"X-API-Key": wrong}).status_code == 401
    # Verified (and cached) as a jobs key: the cache keeps the scope, so still 403 here.
    for _ in range(2):
        assert client.post("/predict/_loop", json={}, headers={"X-API-Key": plaintext}).status_code == 403


def test_a_revocation_takes_effect_at_once_here_and_within_the_cache_time_elsewhere(
    client: TestClient, api_key
) -> None:  # type: ignore[no-untyped-def]
    here, elsewhere = api_key("predict"), api_key("predict")
    for plaintext in (here, elsewhere):
        assert client.post("/predict/_loop", json={}, headers={"X-API-Key": plaintext}).status_code == 200

    with get_sessionmaker()() as session:
        keys.revoke_key(session=session, ident=here[: keys.PREFIX_LEN])  # this process: forgotten at once
        # Behind the service's back (SQL, another process): this process learns it from the row.
        session.execute(
            update(ApiKey).where(ApiKey.prefix == elsewhere[: keys.PREFIX_LEN]).values(revoked_at=utcnow())
        )
        session.commit()
    assert client.post("/predict/_loop", json={}, headers={"X-API-Key": here}).status_code == 401
    time.sleep(keys.RECENT_TTL_S + 0.1)
    assert client.post("/predict/_loop", json={}, headers={"X-API-Key": elsewhere}).status_code == 401


def test_the_asyncio_charge_spends_the_same_bucket_as_the_blocking_one(service_env: dict[str, str]) -> None:
    url = service_env["NER_REDIS_URL"]
    name = f"shared-{time.monotonic_ns()}"
    bucket = ratelimit.TokenBucket(redis_client(url), per_minute=60, burst=3)  # 1 token a second

    def take_async(cost: int = 1) -> ratelimit.Decision:
        return asyncio.run(
            ratelimit.check_cost_async(redis_url=url, key=name, per_minute=60, burst=3, cost=cost)
        )

    decisions = [bucket.take(name), take_async(), bucket.take(name), take_async(), bucket.take(name)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[3].retry_after_s == decisions[4].retry_after_s == 1
    # A cost above the bucket is charged as a full bucket by both: refused now, never forever.
    refused = take_async(cost=50)
    assert not refused.allowed and 2 <= refused.retry_after_s <= 3


def test_the_asyncio_charge_fails_open_without_redis() -> None:
    decision = asyncio.run(
        ratelimit.check_cost_async(
            redis_url=f"redis://127.0.0.1:{free_port()}/0", key="nobody", per_minute=1, burst=1
        )
    )
    assert decision.allowed and decision.remaining == -1


def test_the_heap_is_frozen_for_the_cyclic_collector_once_the_model_is_loaded() -> None:
    """Full collections walked torch's millions of objects with the GIL held, 1-2 s each on a busy
    machine, under load every few seconds: the gateway freezes what is alive once it has a model."""
    from gateway import prediction
    from shared.predict.errors import ModelNotReady

    class Loading:
        calls = 0

        def active(self) -> object:
            self.calls += 1
            if self.calls < 2:
                raise ModelNotReady("the model is still loading")
            return object()

    provider = Loading()
    gc.unfreeze()
    try:
        asyncio.run(prediction._freeze_heap_when_loaded(provider))  # type: ignore[arg-type]
        assert provider.calls == 2  # waited for the model, then froze
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
