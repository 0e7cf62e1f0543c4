"""Job options (issue 14) and results with their text (issue 20), through the HTTP API.

In-process app, real Postgres, the real tiny model; chunks run in this process with the worker's
own runtime (as in test_jobs_api). What is checked is what a caller gets: offsets that slice the
text in the unit asked, filters that only remove, redacted text without the names, 422s that name
the field and the allowed values, and nothing stored for a refused submission.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.tables import Job, JobChunk, ModelVersion, VersionStatus
from shared.jobs import processing
from shared.predict.engine import NerEngine
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from tests.support.auth import settings_env
from worker.runtime import WorkerRuntime

# Emoji (two UTF-16 units, four UTF-8 bytes), CJK (three UTF-8 bytes) and a combining mark before
# and between the names: codepoint, UTF-16 and UTF-8 offsets all differ.
TEXTS = [
    "😀😀 Angela Merkel spoke to reporters in Berlin.",
    "東京 — Kofi Annan met officials of the European Union in Brussels on Monday.",
    "Cafe\u0301 owner: Google was founded by Larry Page and Sergey Brin in California.",
    "Manchester United beat Arsenal 2-1 at Old Trafford 👍🏽.",
    "Angela Merkel and Kofi Annan spoke; later Angela Merkel left Berlin.",
]
KEY = "k" * 32


@pytest.fixture(scope="module")
def env(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    values = {"NER_MODEL": str(tiny_model_dir), "NER_CHUNK_MAX_DOCUMENTS": "2", "NER_REDACT_KEY": KEY}
    with settings_env(values):
        yield {**service_env, **values}
    redis.Redis.from_url(service_env["NER_REDIS_URL"]).delete("inference")


@pytest.fixture(scope="module")
def client(env: dict[str, str]) -> TestClient:
    from gateway.app import create_app

    return TestClient(create_app())


@pytest.fixture(scope="module")
def runtime(env: dict[str, str]) -> WorkerRuntime:
    return WorkerRuntime(get_settings())


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> NerEngine:
    return NerEngine.load(tiny_model_dir)


def run_all(runtime: WorkerRuntime, job_id: str) -> None:
    task = runtime.chunk_task()
    task.heartbeat = None
    with session_scope() as session:
        indexes = session.scalars(select(JobChunk.index).where(JobChunk.job_id == uuid.UUID(job_id))).all()
    for index in indexes:
        processing.process_chunk(job_id=uuid.UUID(job_id), index=index, token=uuid.uuid4().hex, task=task)


def submit(client: TestClient, texts: list[str], **options: Any) -> str:
    documents = [{"id": f"d{i}", "text": text} for i, text in enumerate(texts)]
    response = client.post("/jobs", json={"documents": documents, **options})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def results(client: TestClient, job_id: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/jobs/{job_id}/results", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def finished(client: TestClient, runtime: WorkerRuntime, texts: list[str], **options: Any) -> str:
    job_id = submit(client, texts, **options)
    run_all(runtime, job_id)
    assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
    return job_id


def unit_slice(text: str, start: int, end: int, unit: str) -> str:
    if unit == "utf16":
        return text.encode("utf-16-le")[2 * start : 2 * end].decode("utf-16-le")
    if unit == "utf8":
        return text.encode("utf-8")[start:end].decode("utf-8")
    return text[start:end]


def direct(engine: NerEngine, texts: list[str]) -> list[list[dict[str, Any]]]:
    """What the engine itself answers, as stored (rounded scores, codepoint offsets)."""
    return [[processing.entity_dict(e) for e in entities] for entities in engine.predict(texts)]


@pytest.mark.parametrize("unit", ["codepoint", "utf16", "utf8"])
def test_offsets_in_the_unit_asked_slice_to_the_word(
    client: TestClient, runtime: WorkerRuntime, engine: NerEngine, unit: str
) -> None:
    job_id = finished(client, runtime, TEXTS, offset_encoding=unit)
    items = results(client, job_id)
    expected = direct(engine, TEXTS)
    assert sum(len(entities) for entities in expected) >= 5  # the texts do have entities
    for item, text, want in zip(items, TEXTS, expected, strict=True):
        assert [(e["word"], e["entity_group"]) for e in item["entities"]] == [
            (e["word"], e["entity_group"]) for e in want
        ]
        for entity in item["entities"]:
            assert unit_slice(text, entity["start"], entity["end"], unit) == entity["word"]
    shown = client.get(f"/jobs/{job_id}").json()["options"]
    assert shown == (None if unit == "codepoint" else {"offset_encoding": unit})


def test_label_and_score_filters_only_remove_entities(client: TestClient, runtime: WorkerRuntime) -> None:
    # The same job without options, run the same way (same chunks, same batches): the reference.
    expected = [item["entities"] for item in results(client, finished(client, runtime, TEXTS))]
    scores = sorted(e["score"] for entities in expected for e in entities)
    threshold = scores[len(scores) // 2]  # drops some, keeps some
    per_type = {"PER": threshold, "*": 0.0}
    cases = [
        ({"labels": ["PER", "LOC"]}, lambda e: e["entity_group"] in ("PER", "LOC")),
        ({"exclude_labels": ["PER"]}, lambda e: e["entity_group"] != "PER"),
        ({"min_score": threshold}, lambda e: e["score"] >= threshold),
        ({"min_score": per_type}, lambda e: e["entity_group"] != "PER" or e["score"] >= threshold),
    ]
    for options, keep in cases:
        items = results(client, finished(client, runtime, TEXTS, **options))
        got = [item["entities"] for item in items]
        want = [[e for e in entities if keep(e)] for entities in expected]
        assert got == want, options  # the entities that remain are exactly the unfiltered ones, unchanged
        assert sum(map(len, want)) < sum(map(len, expected)), options  # the filter did remove some


def test_type_redaction_leaves_no_entity_text(client: TestClient, runtime: WorkerRuntime) -> None:
    job_id = finished(client, runtime, TEXTS, redact={"mode": "type"}, offset_encoding="utf16")
    items = results(client, job_id, include_text="true")
    for item, text in zip(items, TEXTS, strict=True):
        assert item["text"] == text
        redacted = item["redacted_text"]
        for entity in item["entities"]:
            assert entity["word"] not in redacted
            assert f"[{entity['entity_group']}]" in redacted
        if not item["entities"]:
            assert redacted == text


def test_hash_redaction_maps_equal_names_to_equal_tokens_and_follows_the_key(
    client: TestClient, runtime: WorkerRuntime, engine: NerEngine
) -> None:
    names = {e["word"] for entities in direct(engine, TEXTS) for e in entities}
    repeated = [name for name in names if sum(text.count(name) for text in TEXTS) >= 2]
    assert repeated, "the texts repeat a name"

    def tokens(job_id: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for item, text in zip(results(client, job_id), TEXTS, strict=True):
            redacted = item["redacted_text"]
            # Walk the entities in order: each one's token sits where its text was.
            shift = 0
            for entity in sorted(item["entities"], key=lambda e: e["start"]):
                start = entity["start"] + shift
                assert redacted[start] == "["
                token = redacted[start : redacted.index("]", start) + 1]
                found.setdefault(entity["word"], set()).add(token)
                shift += len(token) - (entity["end"] - entity["start"])
            assert all(entity["word"] not in redacted for entity in item["entities"])
            assert redacted != text or not item["entities"]
        return found

    first = tokens(finished(client, runtime, TEXTS, redact={"mode": "hash"}))
    for name in repeated:
        assert len(first[name]) == 1  # one name, one token, across the job's documents
    assert len({next(iter(token)) for token in first.values()}) == len(first)  # names stay apart
    with settings_env({"NER_REDACT_KEY": "another-key-" + "x" * 20}):  # workers restarted with it
        second = tokens(finished(client, WorkerRuntime(get_settings()), TEXTS, redact={"mode": "hash"}))
    assert all(first[name] != second[name] for name in first)


def test_results_carry_their_text_in_pages_and_ndjson(client: TestClient, runtime: WorkerRuntime) -> None:
    job_id = finished(client, runtime, TEXTS)
    plain = results(client, job_id)
    assert all("text" not in item and "redacted_text" not in item for item in plain)
    paged = results(client, job_id, include_text="true")
    assert [(item["id"], item["text"]) for item in paged] == [(f"d{i}", t) for i, t in enumerate(TEXTS)]
    stream = client.get(f"/jobs/{job_id}/results", params={"format": "ndjson", "include_text": "true"})
    lines = [json.loads(line) for line in stream.text.splitlines()]
    assert [line["text"] for line in lines] == TEXTS
    assert lines == paged


def test_options_in_a_multipart_upload(client: TestClient, runtime: WorkerRuntime, engine: NerEngine) -> None:
    body = "\n".join(json.dumps({"id": f"u{i}", "text": t}) for i, t in enumerate(TEXTS))
    response = client.post(
        "/jobs",
        files={"file": ("docs.jsonl", body.encode(), "application/x-ndjson")},
        data={"labels": "PER,LOC", "offset_encoding": "utf8", "redact": "mask"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    run_all(runtime, job_id)
    items = results(client, job_id, include_text="true")
    for item, text, want in zip(items, TEXTS, direct(engine, TEXTS), strict=True):
        assert [e["word"] for e in item["entities"]] == [
            e["word"] for e in want if e["entity_group"] in ("PER", "LOC")
        ]
        for entity in item["entities"]:
            assert unit_slice(text, entity["start"], entity["end"], "utf8") == entity["word"]
        assert len(item["redacted_text"]) == len(text)  # mask keeps the length
        assert all(entity["word"] not in item["redacted_text"] for entity in item["entities"])


def row_counts() -> tuple[int, ...]:
    with session_scope() as session:
        return (session.scalar(select(func.count()).select_from(Job)),)


@pytest.mark.parametrize(
    ("options", "field", "allowed"),
    [
        ({"offset_encoding": "bytes"}, "offset_encoding", ["codepoint", "utf16", "utf8"]),
        ({"min_score": 1.5}, "min_score", ["0 to 1"]),
        ({"min_score": {"PER": -0.1}}, "min_score", ["0 to 1"]),
        ({"min_score": "high"}, "min_score", ["0 to 1"]),
        ({"labels": ["PER"], "exclude_labels": ["LOC"]}, "labels", []),
        ({"redact": {"mode": "blur"}}, "redact.mode", ["mask", "type", "hash"]),
        ({"redact": {"mode": "mask", "colour": "red"}}, "redact.colour", []),
        ({"redact": 7}, "redact", ["mask", "type", "hash"]),
        ({"labels": "PER"}, "labels", []),
    ],
)
def test_bad_options_are_422_naming_the_field_and_nothing_is_stored(
    client: TestClient, options: dict[str, Any], field: str, allowed: list[str]
) -> None:
    before = row_counts()
    response = client.post("/jobs", json={"documents": [{"text": TEXTS[0]}], **options})
    assert response.status_code == 422, response.text
    detail = json.dumps(response.json())
    assert field in detail and all(value in detail for value in allowed), detail
    assert row_counts() == before


def test_labels_are_checked_against_the_pinned_versions_types(
    client: TestClient, runtime: WorkerRuntime, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "version"
    shutil.copytree(tiny_model_dir, folder)
    write_manifest(folder)
    labels = json.loads((folder / "config.json").read_text())["id2label"]
    with session_scope() as session:
        version = (session.scalar(select(func.max(ModelVersion.version))) or 0) + 1
        before = registry.get_active(session=session)
        session.add(ModelVersion(version=version, path=str(folder), labels=list(labels.values())))
        session.flush()
        registry.activate(session=session, version=version)
    try:
        before_rows = row_counts()
        for options, field in [
            ({"labels": ["PER", "PLANET"]}, "labels"),
            ({"exclude_labels": ["planet"]}, "exclude_labels"),
            ({"min_score": {"PLANET": 0.5}}, "min_score"),
            ({"redact": {"mode": "type", "types": ["PLANET"]}}, "redact.types"),
        ]:
            response = client.post("/jobs", json={"documents": [{"text": TEXTS[0]}], **options})
            assert response.status_code == 422, response.text
            detail = response.json()["detail"]
            assert field in detail and "PLANET".lower() in detail.lower()
            assert all(kind in detail for kind in ("LOC", "MISC", "ORG", "PER")), detail
        assert row_counts() == before_rows
        job_id = finished(
            client, runtime, TEXTS[:2], labels=["PER"], redact={"mode": "type", "types": ["PER"]}
        )
        assert client.get(f"/jobs/{job_id}").json()["model_version"] == version
    finally:
        with session_scope() as session:
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.version == version)
                .values(status=VersionStatus.retired)
            )
            if before is not None:
                session.flush()
                registry.activate(session=session, version=before.version)


def test_hash_redaction_without_a_key_is_refused_at_submission(client: TestClient) -> None:
    before = row_counts()
    os.environ.pop("NER_REDACT_KEY")
    get_settings.cache_clear()
    try:
        response = client.post("/jobs", json={"documents": [{"text": TEXTS[0]}], "redact": {"mode": "hash"}})
    finally:
        os.environ["NER_REDACT_KEY"] = KEY
        get_settings.cache_clear()
    assert response.status_code == 422, response.text
    assert "redact.mode" in response.text and "NER_REDACT_KEY" in response.text
    assert row_counts() == before
