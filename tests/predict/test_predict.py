"""``/predict/`` over HTTP (httpx against the ASGI app, lifespan included) with a real model folder.

The app runs against the session's real Postgres (registry) and Redis (pub/sub, readiness).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from gateway.app import create_app
from shared.core.config import get_settings
from shared.core.db import reset_engine, session_scope
from shared.core.tables import ModelVersion, VersionStatus
from shared.predict.batcher import MicroBatcher
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from trainer.conll import read_conll

GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."


@contextmanager
def running_app(env: dict[str, str], unset: tuple[str, ...] = ()) -> Iterator[TestClient]:
    """The gateway with ``env`` applied for its whole life (settings are read per request too)."""
    with pytest.MonkeyPatch.context() as patch:
        for key in unset:
            patch.delenv(key, raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        reset_engine()
        try:
            with TestClient(create_app()) as client:
                yield client
        finally:
            get_settings.cache_clear()
            reset_engine()


def wait_for_model(client: TestClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").json()["checks"]["model"] == "ok":
            return
        time.sleep(0.1)
    raise AssertionError(f"model not loaded: {client.get('/readyz').json()}")


@pytest.fixture(scope="module")
def client(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[TestClient]:
    # A longer batching window than the default makes merging certain on a busy test machine.
    env = {"NER_MODEL": str(tiny_model_dir), "NER_BATCH_MAX_WAIT_MS": "30"}
    with running_app(env) as app_client:
        wait_for_model(app_client)
        yield app_client


def _check_entities(text: str, entities: list[dict]) -> None:
    previous_end = 0
    for entity in entities:
        assert set(entity) == {"word", "entity_group", "score", "start", "end"}
        assert previous_end <= entity["start"] < entity["end"] <= len(text)
        assert entity["word"] == text[entity["start"] : entity["end"]]
        previous_end = entity["end"]


def test_predict_answers_the_example_with_offsets_and_version(client: TestClient) -> None:
    response = client.post("/predict/", json={"text": GOOGLE})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(e["word"], e["entity_group"]) for e in body["entities"]] == [
        ("Google", "ORG"),
        ("Larry Page", "PER"),
        ("Sergey Brin", "PER"),
        ("California", "LOC"),
    ]
    _check_entities(GOOGLE, body["entities"])
    assert body["model_version"] is None  # the registry is empty: NER_MODEL answers
    ready = client.get("/readyz").json()
    assert ready.pop("model")["precision"] in ("fp32", "bf16")  # what NER_PRECISION=auto chose here
    assert ready == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "model": "ok"},
    }


def test_batch_gives_one_result_per_text_in_order(client: TestClient) -> None:
    texts = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=12)]
    texts.insert(3, "   ")
    response = client.post("/predict/batch", json={"texts": texts})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(texts)
    assert results[3]["entities"] == []
    for text, result in zip(texts, results, strict=True):
        single = client.post("/predict/", json={"text": text}).json()["entities"]
        assert [(e["start"], e["end"], e["entity_group"]) for e in result["entities"]] == [
            (e["start"], e["end"], e["entity_group"]) for e in single
        ]
        _check_entities(text, result["entities"])


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/predict/", {}, "text"),
        ("/predict/", {"txt": "Google"}, "text"),
        ("/predict/", {"text": 5}, "text"),
        ("/predict/", {"text": None}, "text"),
        ("/predict/", {"text": ["Google"]}, "text"),
        ("/predict/", {"text": ""}, "text"),
        ("/predict/", ["Google"], "body"),
        ("/predict/batch", {}, "texts"),
        ("/predict/batch", {"texts": "Google"}, "texts"),
        ("/predict/batch", {"texts": []}, "texts"),
        ("/predict/batch", {"texts": ["Google", 7]}, "texts"),
        ("/predict/batch", {"texts": ["Google", ""]}, "texts"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    client: TestClient, path: str, payload: object, field: str
) -> None:
    response = client.post(path, json=payload)
    assert response.status_code == 422, response.text
    assert any(field in error["loc"] for error in response.json()["detail"]), response.json()


def test_invalid_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/predict/", content=b'{"text": "Goo', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.text


def test_whitespace_only_is_200_without_entities(client: TestClient) -> None:
    response = client.post("/predict/", json={"text": " \r\n\t \u3000"})
    assert response.status_code == 200
    assert response.json()["entities"] == []


def test_over_the_limits_is_413_with_the_limit(client: TestClient) -> None:
    limit = get_settings().predict_max_chars
    response = client.post("/predict/", json={"text": "a" * (limit + 1)})
    assert response.status_code == 413
    assert f"{limit:,}" in response.json()["detail"] and "NER_PREDICT_MAX_CHARS" in response.json()["detail"]

    response = client.post("/predict/batch", json={"texts": ["ok", "a" * (limit + 1)]})
    assert response.status_code == 413
    assert "texts[1]" in response.json()["detail"]

    count = get_settings().predict_batch_max_texts
    response = client.post("/predict/batch", json={"texts": ["Paris"] * (count + 1)})
    assert response.status_code == 413
    assert f"{count:,}" in response.json()["detail"]


@pytest.mark.slow
def test_a_15000_word_document_is_read_to_its_end(client: TestClient) -> None:
    paragraphs, words = [], 0
    sentences = read_conll(get_settings().conll_dir / "eng.testb")
    for start in range(0, len(sentences), 8):
        paragraph = " ".join(" ".join(s.tokens) for s in sentences[start : start + 8])
        paragraphs.append(paragraph)
        words += len(paragraph.split())
        if words >= 15_000:
            break
    paragraphs.append(GOOGLE)
    text = "\n\n".join(paragraphs)
    assert len(text.split()) >= 15_000 and len(text) <= get_settings().predict_max_chars

    response = client.post("/predict/", json={"text": text})
    assert response.status_code == 200, response.text
    entities = response.json()["entities"]
    _check_entities(text, entities)  # sorted, non-overlapping: nothing duplicated at window edges
    assert len({(e["start"], e["end"]) for e in entities}) == len(entities)
    last = len(text) - len(GOOGLE)
    # The tiny model's types wobble with the preceding sports results; the spans must not.
    tail = [(e["word"], e["start"] - last) for e in entities if e["start"] >= last]
    assert tail == [("Google", 0), ("Larry Page", 22), ("Sergey Brin", 37), ("California", 52)]
    assert len(entities) > 1000  # the whole document was read, not the first window


def test_concurrent_requests_are_merged_into_one_model_call(client: TestClient) -> None:
    batcher = client.app.state.batcher
    before = batcher.stats.batches
    names = ["Larry Page", "Kofi Annan", "Sergey Brin", "Angela Merkel", "Bill Clinton", "Boris Yeltsin"]
    texts = [
        f"{names[i % len(names)]} visited {['Paris', 'Berlin', 'Moscow'][i % 3]} on day {i} ."
        for i in range(24)
    ]
    barrier = threading.Barrier(len(texts))

    def call(text: str) -> dict:
        barrier.wait()
        response = client.post("/predict/", json={"text": text})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(len(texts)) as pool:
        bodies = list(pool.map(call, texts))
    for text, body in zip(texts, bodies, strict=True):
        _check_entities(text, body["entities"])  # each caller got the entities of its own text
    calls = batcher.stats.batches - before
    assert calls < len(texts), f"{len(texts)} requests took {calls} model calls"
    assert batcher.stats.max_batch_requests > 1


def test_no_model_is_503_saying_how_to_get_one(service_env: dict[str, str]) -> None:
    with running_app({}, unset=("NER_MODEL",)) as app_client:
        deadline = time.monotonic() + 30
        while (
            app_client.get("/readyz").json()["checks"]["model"] == "loading" and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        response = app_client.post("/predict/", json={"text": GOOGLE})
        assert response.status_code == 503
        assert "NER_MODEL" in response.json()["detail"] and "train" in response.json()["detail"]
        ready = app_client.get("/readyz")
        assert ready.status_code == 503
        assert "NER_MODEL" in ready.json()["checks"]["model"]


def _promote(version: int, path: Path, redis_url: str) -> None:
    write_manifest(path)  # activation requires a manifest whose hashes match (issue 19)
    with session_scope() as session:
        session.add(ModelVersion(version=version, path=str(path), status=VersionStatus.candidate))
    with session_scope() as session:
        registry.promote(session=session, version=version, redis_url=redis_url)


def test_activating_a_version_swaps_models_without_failing_requests(
    client: TestClient, service_env: dict[str, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    good, broken = tmp_path / "good", tmp_path / "broken"
    shutil.copytree(tiny_model_dir, good)
    shutil.copytree(tiny_model_dir, broken)
    # Passes the registry's folder check (labels, weights) but no architecture loads it.
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    redis_url = service_env["NER_REDIS_URL"]
    seen: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            response = client.post("/predict/", json={"text": GOOGLE})
            seen.append((response.status_code, response.json().get("model_version")))

    def wait_for_version(version: int | None, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seen and seen[-1] == (200, version):
                return
            time.sleep(0.05)
        raise AssertionError(f"still answering with {seen[-1:]} after {timeout}s, wanted version {version}")

    askers = [threading.Thread(target=keep_asking) for _ in range(3)]
    try:
        for asker in askers:
            asker.start()
        wait_for_version(None)
        # A version that cannot be loaded: the service keeps answering with what it has.
        _promote(901, broken, redis_url)
        provider = client.app.state.model_provider
        deadline = time.monotonic() + 15
        while str(broken) not in (provider.load_error or "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert str(broken) in (provider.load_error or ""), "the broken version was never tried"
        time.sleep(0.5)
        assert seen[-1] == (200, None)
        _promote(902, good, redis_url)
        wait_for_version(902)
    finally:
        stop.set()
        for asker in askers:
            asker.join()
        with session_scope() as session:
            session.execute(delete(ModelVersion).where(ModelVersion.version.in_([901, 902])))
    assert {status for status, _ in seen} == {200}, "a request failed during the swap"
    assert client.app.state.model_provider.get(902).version == 902


# --- the micro-batcher on its own (a recording predict function instead of a model) ----------


def _recording_batcher(calls: list[list[str]], **kwargs: float) -> MicroBatcher[str, str]:
    def predict(texts: list[str]) -> tuple[str, list[str]]:
        calls.append(list(texts))
        if "boom" in texts:
            raise ValueError("model failed")
        time.sleep(0.05)  # a model call takes a while; requests arriving meanwhile form the next batch
        return "meta", [text.upper() for text in texts]

    return MicroBatcher(
        predict, max_batch_size=int(kwargs.get("size", 8)), max_wait_ms=kwargs.get("wait", 20)
    )


def test_batcher_merges_up_to_the_size_and_keeps_each_callers_results() -> None:
    calls: list[list[str]] = []

    async def scenario() -> list[tuple[str, list[str]]]:
        batcher = _recording_batcher(calls, size=8)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(20)))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert results == [("meta", [f"T{i}"]) for i in range(20)]
    assert max(len(call) for call in calls) == 8 and len(calls) == 3
    assert sorted(text for call in calls for text in call) == sorted(f"t{i}" for i in range(20))


def test_batcher_closes_once_the_last_batchs_callers_are_back_and_waits_for_fewer() -> None:
    calls: list[list[str]] = []

    def predict(texts: list[str]) -> tuple[str, list[str]]:
        calls.append(list(texts))
        return "meta", texts

    async def arrivals(batcher: MicroBatcher[str, str], names: list[str]) -> float:
        """Seconds until every caller of ``names``, arriving 10 ms apart, is answered."""
        started = time.perf_counter()
        callers = []
        for name in names:
            callers.append(asyncio.ensure_future(batcher.submit([name])))
            await asyncio.sleep(0.01)
        await asyncio.gather(*callers)
        return time.perf_counter() - started

    async def scenario() -> tuple[float, float]:
        # max_wait far above the arrivals' spread: only the callers' count can close a batch early.
        batcher: MicroBatcher[str, str] = MicroBatcher(predict, max_batch_size=64, max_wait_ms=1500)
        batcher.start()
        try:
            await asyncio.gather(*(batcher.submit([name]) for name in ("a", "b", "c")))  # one batch of 3
            three_back = await arrivals(batcher, ["d", "e", "f"])
            two_back = await arrivals(batcher, ["g", "h"])
            return three_back, two_back
        finally:
            await batcher.stop()

    three_back, two_back = asyncio.run(scenario())
    assert calls == [["a", "b", "c"], ["d", "e", "f"], ["g", "h"]]
    assert three_back < 0.8  # closed when the third came, not after max_wait
    assert two_back >= 1.4  # one caller short: the batch waited out max_wait for it


def test_batcher_never_splits_a_request_and_reports_errors_to_every_caller() -> None:
    calls: list[list[str]] = []

    async def scenario() -> list[object]:
        batcher = _recording_batcher(calls, size=4)
        batcher.start()
        try:
            return await asyncio.gather(
                batcher.submit(["a", "b", "c"]),
                batcher.submit(["d", "e", "f", "g", "h", "i"]),  # larger than a batch: runs alone, whole
                batcher.submit(["boom"]),
                batcher.submit(["j"]),
                return_exceptions=True,
            )
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert results[0] == ("meta", ["A", "B", "C"])
    assert results[1] == ("meta", ["D", "E", "F", "G", "H", "I"])
    assert isinstance(results[2], ValueError) and isinstance(results[3], ValueError)  # same batch
    assert ["d", "e", "f", "g", "h", "i"] in calls


def test_batcher_stop_fails_waiting_callers_instead_of_hanging() -> None:
    async def scenario() -> object:
        def slow(texts: list[str]) -> tuple[str, list[str]]:
            time.sleep(0.5)
            return "meta", texts

        batcher: MicroBatcher[str, str] = MicroBatcher(slow, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit([f"t{i}"])) for i in range(3)]
        await asyncio.sleep(0.1)
        await batcher.stop()
        return await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 2)

    results = asyncio.run(scenario())
    assert all(isinstance(result, RuntimeError) for result in results)
