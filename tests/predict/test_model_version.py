"""``model_version``: a request pinned to a registry version is answered by it, loaded on demand.

Two real model folders (copies of the tiny fine-tuned checkpoint; the second names its person type
``PERSON``, so an answer shows which model gave it) in the session's real Postgres registry, the
gateway in-process over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.core.config import Settings, get_settings
from shared.core.db import session_scope
from shared.predict.batcher import MicroBatcher
from shared.predict.engine.errors import ModelLoadError
from shared.predict.errors import VersionNotLoadable
from shared.predict.serving import ModelProvider
from shared.registry import service as registry
from shared.registry.errors import VersionNotFound
from shared.registry.manifest import write_manifest
from tests.predict.test_predict import running_app, wait_for_model
from tests.support.registry import registry_restored

TEXT = "Larry Page met Kofi Annan in Paris on Monday ."


def _register(folder: Path, *, active: bool = False) -> int:
    """``folder`` as the registry's next version (the active one if asked); its number."""
    write_manifest(folder)
    with session_scope() as session:
        number = registry.next_version_number(session=session)
        labels = list(json.loads((folder / "config.json").read_text())["id2label"].values())
        registry.register_version(
            session=session, version=number, path=str(folder), base_model="", data_hash="", data_ref={},
            params={}, metrics={}, labels=labels, val_f1=None, test_f1=None,
        )  # fmt: skip
    if active:
        with session_scope() as session:
            registry.promote(session=session, version=number, redis_url=get_settings().redis_url)
    return number


def _copy(tiny_model_dir: Path, folder: Path, *, rename: dict[str, str] | None = None) -> Path:
    """A copy of the tiny model; ``rename`` changes entity type names (PER -> PERSON) in its config."""
    shutil.copytree(tiny_model_dir, folder)
    if rename:
        config = json.loads((folder / "config.json").read_text())

        def renamed(label: str) -> str:
            prefix, _, kind = label.rpartition("-")
            return f"{prefix}-{rename.get(kind, kind)}" if prefix else label

        config["id2label"] = {k: renamed(v) for k, v in config["id2label"].items()}
        config["label2id"] = {renamed(k): v for k, v in config["label2id"].items()}
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def versions(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[dict[str, int]]:
    """The active version, a candidate whose persons are PERSON, a second copy for slow loads, and one
    whose folder does not load; removed (and the registry as it was) afterwards."""
    root = Path(service_env["NER_ARTIFACTS_DIR"]) / "model-version-test"
    if root.exists():
        shutil.rmtree(root)
    with registry_restored(service_env["NER_REDIS_URL"]):
        active = _register(_copy(tiny_model_dir, root / "active"), active=True)
        person = _register(_copy(tiny_model_dir, root / "person", rename={"PER": "PERSON"}))
        slow = _register(_copy(tiny_model_dir, root / "slow"))
        broken = _copy(tiny_model_dir, root / "broken")
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
        yield {"active": active, "person": person, "slow": slow, "broken": _register(broken)}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def client(versions: dict[str, int]) -> Iterator[TestClient]:
    with running_app({"NER_MODEL_CACHE_SIZE": "3"}, unset=("NER_MODEL",)) as app_client:
        wait_for_model(app_client)
        yield app_client


def _types(body: dict) -> set[str]:
    return {e["entity_group"] for e in body["entities"]}


def test_a_pinned_version_answers_while_another_is_active(
    client: TestClient, versions: dict[str, int]
) -> None:
    plain = client.post("/predict/", json={"text": TEXT}).json()
    assert plain["model_version"] == versions["active"] and "PER" in _types(plain), plain
    response = client.post("/predict/", json={"text": TEXT, "model_version": versions["person"]})
    assert response.status_code == 200, response.text
    pinned = response.json()
    assert pinned["model_version"] == versions["person"]
    assert "PERSON" in _types(pinned) and "PER" not in _types(pinned)
    # The same spans: the copy differs only in its type names.
    assert [(e["start"], e["end"]) for e in pinned["entities"]] == [
        (e["start"], e["end"]) for e in plain["entities"]
    ]
    batch = client.post(
        "/predict/batch", json={"texts": [TEXT, "Paris"], "model_version": versions["person"]}
    )
    assert batch.status_code == 200 and batch.json()["model_version"] == versions["person"]
    assert batch.json()["results"][0]["entities"] == pinned["entities"]
    redacted = client.post(
        "/redact", json={"text": TEXT, "mode": "type", "model_version": versions["person"]}
    )
    assert redacted.status_code == 200 and redacted.json()["model_version"] == versions["person"]
    assert "[PERSON]" in redacted.json()["text"]
    # Pinning the active version is answered by it; omitting it still gives the active one.
    assert client.post("/predict/", json={"text": TEXT, "model_version": versions["active"]}).json() == plain
    assert client.post("/predict/", json={"text": TEXT}).json() == plain
    # Types are checked against the model that answers.
    response = client.post(
        "/predict/", json={"text": TEXT, "model_version": versions["person"], "labels": ["PER"]}
    )
    assert (
        response.status_code == 422 and "allowed values: LOC, MISC, ORG, PERSON" in response.json()["detail"]
    )
    only = client.post(
        "/predict/", json={"text": TEXT, "model_version": versions["person"], "labels": ["PERSON"]}
    )
    assert only.status_code == 200 and _types(only.json()) == {"PERSON"}


def test_mixed_concurrent_requests_each_get_their_own_version(
    client: TestClient, versions: dict[str, int]
) -> None:
    wanted = [versions["person"] if i % 2 else None for i in range(24)]
    barrier = threading.Barrier(len(wanted))

    def call(version: int | None) -> dict:
        barrier.wait()
        body = {"text": TEXT} if version is None else {"text": TEXT, "model_version": version}
        response = client.post("/predict/", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(len(wanted)) as pool:
        answers = list(pool.map(call, wanted))
    for version, answer in zip(wanted, answers, strict=True):
        assert answer["model_version"] == (version or versions["active"])
        assert ("PERSON" in _types(answer)) == (version is not None)
        assert ("PER" in _types(answer)) == (version is None)


@pytest.mark.parametrize("path", ["/predict/", "/predict/batch", "/redact"])
def test_unknown_versions_are_404_and_bad_ones_422(client: TestClient, path: str) -> None:
    body = {"texts": [TEXT]} if path.endswith("batch") else {"text": TEXT}
    response = client.post(path, json={**body, "model_version": 987_654})
    assert response.status_code == 404, response.text
    assert "model_version" in response.json()["detail"] and "987654" in response.json()["detail"]
    for bad in [0, -1, "latest", 1.5, True]:
        response = client.post(path, json={**body, "model_version": bad})
        assert response.status_code == 422, (bad, response.text)
        assert any("model_version" in error["loc"] for error in response.json()["detail"])


def test_a_version_that_does_not_load_is_409_and_the_active_one_goes_on(
    client: TestClient, versions: dict[str, int]
) -> None:
    response = client.post("/predict/", json={"text": TEXT, "model_version": versions["broken"]})
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert f"version {versions['broken']} does not load" in detail and "model-version-test" not in detail
    again = client.post("/predict/", json={"text": TEXT, "model_version": versions["broken"]})
    assert again.status_code == 409  # remembered: not loaded again on every request
    assert client.post("/predict/", json={"text": TEXT}).json()["model_version"] == versions["active"]


def test_a_slow_loading_version_does_not_block_the_active_one(
    client: TestClient, versions: dict[str, int]
) -> None:
    provider: ModelProvider = client.app.state.model_provider
    assert provider.loaded(versions["slow"]) is None
    load_seconds = 4.0
    loads: list[str] = []
    real_loader = provider._loader

    def slow_loader(path: str):  # type: ignore[no-untyped-def]
        loads.append(path)
        time.sleep(load_seconds)  # a big checkpoint from a slow disk
        return real_loader(path)

    provider._loader = slow_loader
    pinned: list[tuple[float, dict]] = []

    def ask_pinned() -> None:
        started = time.monotonic()
        response = client.post("/predict/", json={"text": TEXT, "model_version": versions["slow"]})
        assert response.status_code == 200, response.text
        pinned.append((time.monotonic() - started, response.json()))

    try:
        askers = [threading.Thread(target=ask_pinned) for _ in range(3)]
        for asker in askers:
            asker.start()
        latencies = []
        deadline = time.monotonic() + load_seconds - 0.5
        while time.monotonic() < deadline:  # while the slow version loads
            started = time.monotonic()
            response = client.post("/predict/", json={"text": TEXT})
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200 and response.json()["model_version"] == versions["active"]
        for asker in askers:
            asker.join(60)
    finally:
        provider._loader = real_loader
    print(
        f"\nactive version while v{versions['slow']} loaded for {load_seconds}s: {len(latencies)} requests, "
        f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
        f"pinned requests took {', '.join(f'{s:.1f}s' for s, _ in pinned)}"
    )
    assert len(latencies) >= 5 and max(latencies) < load_seconds / 2, latencies
    assert len(pinned) == 3 and all(body["model_version"] == versions["slow"] for _, body in pinned)
    assert all(seconds >= load_seconds * 0.9 for seconds, _ in pinned)
    assert len(loads) == 1, "three requests for one version loaded it once"
    assert provider.loaded(versions["slow"]) is not None


# --- the LRU of engines, on the provider alone (a recording loader instead of a model) ---------


def test_pinned_versions_are_kept_in_a_small_lru_and_the_active_one_is_never_evicted(
    versions: dict[str, int],
) -> None:
    loads: list[str] = []

    def loader(path: str) -> object:
        loads.append(Path(path).name)
        return object()

    settings = Settings(model_cache_size=2)  # the active one and one pinned
    provider = ModelProvider(settings, loader=loader)  # type: ignore[arg-type]
    assert provider._max_cached == 2
    load: Callable[[int], object] = lambda version: provider.load_version(version).result(timeout=30)  # noqa: E731
    try:
        assert provider.active().version == versions["active"]
        assert load(versions["active"]) is provider.active() and loads == ["active"]
        load(versions["person"])
        assert provider.loaded(versions["person"]) is not None
        load(versions["slow"])  # evicts person, the least recently used; never the active one
        assert provider.loaded(versions["person"]) is None and provider.loaded(versions["slow"]) is not None
        assert provider.loaded(versions["active"]) is provider.active()
        load(versions["person"])
        assert loads == ["active", "person", "slow", "person"]
        with pytest.raises(VersionNotFound, match="model_version"):
            provider.load_version(987_654)
    finally:
        provider.stop()


def test_a_failed_load_is_not_retried_at_once(versions: dict[str, int]) -> None:
    calls: list[str] = []

    def loader(path: str) -> object:
        calls.append(path)
        raise ModelLoadError(f"cannot load {path}")

    provider = ModelProvider(get_settings(), loader=loader)  # type: ignore[arg-type]
    try:
        with pytest.raises(VersionNotLoadable, match="does not load") as info:
            provider.load_version(versions["person"]).result(timeout=30)
        assert "person" not in str(info.value)  # the folder is not shown to callers
        with pytest.raises(VersionNotLoadable):
            provider.load_version(versions["person"])
        assert len(calls) == 1
    finally:
        provider.stop()


# --- the micro-batcher keyed by version (recording predict functions instead of models) ------


def test_batches_never_mix_versions_and_each_caller_gets_its_own_versions_answer() -> None:
    calls: list[tuple[str, list[str]]] = []

    def model(name: str) -> Callable[[list[str]], tuple[str, list[str]]]:
        def predict(texts: list[str]) -> tuple[str, list[str]]:
            calls.append((name, list(texts)))
            time.sleep(0.02)  # requests arriving meanwhile queue up for the next batches
            return name, [f"{name}:{text}" for text in texts]

        return predict

    async def scenario() -> list[tuple[str, list[str]]]:
        batcher: MicroBatcher[str, str] = MicroBatcher(model("default"), max_batch_size=4, max_wait_ms=20)
        batcher.start()
        try:
            requests = []
            for i in range(30):
                name = ["v1", "v2", "v3"][i % 3]
                requests.append(batcher.submit([f"t{i}"], key=name, predict=model(name)))
            requests.append(
                batcher.submit(["a", "b", "c", "d", "e"], key="v1", predict=model("v1"))
            )  # too big
            requests.append(batcher.submit(["plain"]))  # no key: the batcher's own predict
            return await asyncio.gather(*requests)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    for i, (meta, answer) in enumerate(results[:30]):
        name = ["v1", "v2", "v3"][i % 3]
        assert (meta, answer) == (name, [f"{name}:t{i}"])
    assert results[30] == ("v1", [f"v1:{t}" for t in "abcde"])  # never split, even over the size
    assert results[31] == ("default", ["default:plain"])
    for name, texts in calls:  # each model call saw its own version's texts only
        expected = {f"t{i}" for i in range(30) if ["v1", "v2", "v3"][i % 3] == name}
        assert set(texts) <= expected | ({"a", "b", "c", "d", "e"} if name == "v1" else {"plain"})
    assert max(len(texts) for _, texts in calls) == 5 and len(calls) < 32  # same-version requests merged
