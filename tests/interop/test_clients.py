"""The real client libraries against a real ``ner serve`` process with API keys enforced.

``huggingface_hub.InferenceClient`` (the Inference API shape, ``/hf``) and ``tritonclient.http``
(the Open Inference Protocol, ``/v2``) are used exactly as their users use them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from tritonclient.utils import InferenceServerException

from shared.core.config import get_settings
from shared.core.db import get_sessionmaker
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from tests.support.auth import create_key
from tests.support.processes import ServiceProcess, start_gateway, wait_until

GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."
KOFI = "Kofi Annan visited Nairobi on Monday."


@pytest.fixture(scope="module")
def gateway(service_env: dict[str, str], tiny_model_dir: Path, log_dir: Path) -> Iterator[tuple[str, str]]:
    """A ``ner serve`` with keys on and the tiny model; yields its URL and a ``predict`` key."""
    env = {**service_env, "NER_AUTH": "on", "NER_MODEL": str(tiny_model_dir)}
    proc: ServiceProcess
    proc, base_url = start_gateway(env, log_dir)
    key = create_key("predict", name="interop")
    wait_until(
        lambda: httpx.get(f"{base_url}/v2/health/ready", timeout=2).status_code == 200,
        120,
        "the model to load",
        proc,
    )
    yield base_url, key
    proc.stop()


def _predict(base_url: str, key: str, text: str) -> list[dict]:
    response = httpx.post(f"{base_url}/predict/", json={"text": text}, headers={"X-API-Key": key}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["entities"]


def _groups(entities: list[dict]) -> list[tuple[str, str, int, int]]:
    return [(e["word"], e["entity_group"], e["start"], e["end"]) for e in entities]


def test_inference_client_token_classification(gateway: tuple[str, str]) -> None:
    base_url, key = gateway
    client = InferenceClient(model=f"{base_url}/hf", token=key)
    result = client.token_classification(GOOGLE, aggregation_strategy="simple")
    got = [(r.word, r.entity_group, r.start, r.end) for r in result]
    assert got == [
        ("Google", "ORG", 0, 6),
        ("Larry Page", "PER", 22, 32),
        ("Sergey Brin", "PER", 37, 48),
        ("California", "LOC", 52, 62),
    ]
    assert got == _groups(_predict(base_url, key, GOOGLE))
    assert all(0 < r.score <= 1 for r in result)
    # ignore_labels is honoured; base_url works like model=.
    by_base = InferenceClient(base_url=f"{base_url}/hf", token=key)
    without_per = by_base.token_classification(GOOGLE, ignore_labels=["PER"], stride=16)
    assert [r.word for r in without_per] == ["Google", "California"]


def test_inference_client_needs_a_predict_key(gateway: tuple[str, str]) -> None:
    base_url, _key = gateway
    with pytest.raises(HfHubHTTPError) as info:
        InferenceClient(model=f"{base_url}/hf", token="ner_bogus_key").token_classification(GOOGLE)
    assert info.value.response.status_code == 401
    jobs_key = create_key("jobs", name="interop-jobs")
    with pytest.raises(HfHubHTTPError) as info:
        InferenceClient(model=f"{base_url}/hf", token=jobs_key).token_classification(GOOGLE)
    assert info.value.response.status_code == 403


def test_hf_route_names_bad_input(gateway: tuple[str, str]) -> None:
    base_url, key = gateway
    headers = {"Authorization": f"Bearer {key}"}
    cases = [
        ({"inputs": ""}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": GOOGLE, "parameters": {"top_k": 3}}, "top_k"),
        ({"inputs": GOOGLE, "parameters": {"aggregation_strategy": "best"}}, "aggregation_strategy"),
        ({"text": GOOGLE}, "inputs"),
    ]
    for body, named in cases:
        response = httpx.post(f"{base_url}/hf", json=body, headers=headers, timeout=30)
        assert response.status_code == 422, (body, response.text)
        assert named in response.text, (body, response.text)
    long_text = "a" * 100_001  # over NER_PREDICT_MAX_CHARS, as /predict/
    response = httpx.post(f"{base_url}/hf", json={"inputs": long_text}, headers=headers, timeout=30)
    assert response.status_code == 413 and "NER_PREDICT_MAX_CHARS" in response.text
    # A list of texts gives one list per text, in order.
    response = httpx.post(f"{base_url}/hf/models/any/id", json={"inputs": [GOOGLE, KOFI]}, headers=headers)
    assert response.status_code == 200, response.text
    assert [_groups(r) for r in response.json()] == [
        _groups(_predict(base_url, key, GOOGLE)),
        _groups(_predict(base_url, key, KOFI)),
    ]


def _triton(base_url: str, key: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=base_url.removeprefix("http://"))


def _texts_input(texts: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_health_metadata_and_infer(gateway: tuple[str, str], binary: bool) -> None:
    base_url, key = gateway
    client = _triton(base_url, key)
    headers = {"X-API-Key": key}
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("ner", headers=headers)
    metadata = client.get_model_metadata("ner", headers=headers)
    assert metadata["name"] == "ner" and metadata["outputs"][0]["name"] == "entities"
    outputs = None if binary else [triton.InferRequestedOutput("entities", binary_data=False)]
    result = client.infer(
        "ner", [_texts_input([GOOGLE, KOFI], binary)], outputs=outputs, headers=headers, request_id="r-1"
    )
    answers = [json.loads(item) for item in result.as_numpy("entities")]
    assert [_groups(a) for a in answers] == [
        _groups(_predict(base_url, key, GOOGLE)),
        _groups(_predict(base_url, key, KOFI)),
    ]
    assert _groups(answers[0])[0] == ("Google", "ORG", 0, 6)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == "ner"


def test_registry_versions_are_the_models_versions(gateway: tuple[str, str], tiny_model_dir: Path) -> None:
    """A registry version is listed; an infer that names it is answered by it, loaded on demand,
    while another model (NER_MODEL) stays the one answering unversioned calls."""
    base_url, key = gateway
    settings = get_settings()
    with get_sessionmaker()() as session:
        number = registry.next_version_number(session=session)
        folder = Path(settings.artifacts_dir) / f"kserve-test-v{number}"
        shutil.copytree(tiny_model_dir, folder)
        write_manifest(folder)
        registry.register_version(
            session=session, version=number, path=str(folder), base_model="", data_hash="", data_ref={},
            params={}, metrics={}, labels=[], val_f1=None, test_f1=None,
        )  # fmt: skip
        session.commit()
        known = [str(row.version) for row in registry.list_versions(session=session)]
    client = _triton(base_url, key)
    assert client.get_model_metadata("ner", headers={"X-API-Key": key})["versions"] == known
    assert str(number) in known
    one = client.get_model_metadata("ner", model_version=str(number), headers={"X-API-Key": key})
    assert one["versions"] == [str(number)]
    # A candidate: NER_MODEL answers, so this version is not loaded (not ready) until asked for.
    assert not client.is_model_ready("ner", model_version=str(number), headers={"X-API-Key": key})
    result = client.infer(
        "ner", [_texts_input([GOOGLE, KOFI], True)], model_version=str(number), headers={"X-API-Key": key}
    )
    assert result.get_response()["model_version"] == str(number)
    answers = [json.loads(item) for item in result.as_numpy("entities")]
    # The copy of the tiny model gives what NER_MODEL (the same weights) gives.
    assert [_groups(a) for a in answers] == [
        _groups(_predict(base_url, key, GOOGLE)),
        _groups(_predict(base_url, key, KOFI)),
    ]
    assert client.is_model_ready("ner", model_version=str(number), headers={"X-API-Key": key})
    unversioned = client.infer("ner", [_texts_input([GOOGLE], True)], headers={"X-API-Key": key})
    assert "model_version" not in unversioned.get_response()  # NER_MODEL still answers those


def test_tritonclient_errors_are_named(gateway: tuple[str, str]) -> None:
    base_url, key = gateway
    client = _triton(base_url, key)
    headers = {"X-API-Key": key}
    with pytest.raises(InferenceServerException, match="not served here"):
        client.get_model_metadata("bert", headers=headers)
    with pytest.raises(InferenceServerException, match="no version '7'"):
        client.infer("ner", [_texts_input([GOOGLE], True)], model_version="7", headers=headers)
    with pytest.raises(InferenceServerException, match="missing API key"):
        client.infer("ner", [_texts_input([GOOGLE], True)])
    numbers = triton.InferInput("text", [2], "INT32")
    numbers.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="datatype is INT32"):
        client.infer("ner", [numbers], headers=headers)
    # A shape that does not match the data, sent by hand (tritonclient adds its own headers to the
    # dict it is given, so a fresh one).
    headers = {"X-API-Key": key}
    body = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": [GOOGLE]}]}
    response = httpx.post(f"{base_url}/v2/models/ner/infer", json=body, headers=headers)
    assert response.status_code == 400 and "holds 3 elements" in response.text
    response = httpx.post(f"{base_url}/v2/models/ner/infer", content=b"{", headers=headers)
    assert response.status_code == 400 and "not an inference request" in response.text
