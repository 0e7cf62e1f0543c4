"""Bulk jobs through the HTTP API (in-process app, real Postgres, real model), chunks run in-process.

Chunk tasks are executed here by calling the task body with a real engine, so each test decides
exactly which chunks have run; the worker processes themselves are exercised in test_jobs_faults.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.tables import (
    ChunkStatus,
    Job,
    JobChunk,
    JobDocument,
    JobResult,
    ModelVersion,
    VersionStatus,
)
from shared.jobs import maintenance, processing
from shared.jobs.cursors import encode_cursor
from shared.jobs.lifecycle import utcnow
from shared.jobs.processing import ChunkTask
from shared.predict.engine import NerEngine
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from tests.support.auth import settings_env
from tests.support.processes import start_gateway
from worker.runtime import WorkerRuntime

SENTENCES = [
    "Google was founded by Larry Page and Sergey Brin in California.",
    "Kofi Annan met officials of the European Union in Brussels on Monday.",
    "Manchester United beat Arsenal 2-1 at Old Trafford.",
    "The New York Stock Exchange fell as investors sold shares of Microsoft.",
    "Angela Merkel spoke to reporters in Berlin.",
    "Prices rose in Japan and China last year.",
]
CHUNK_DOCS = 4


@pytest.fixture(scope="module")
def jobs_env(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    """The test service with the tiny model as NER_MODEL and small chunks (several per job)."""
    values = {"NER_MODEL": str(tiny_model_dir), "NER_CHUNK_MAX_DOCUMENTS": str(CHUNK_DOCS)}
    with settings_env(values):
        yield {**service_env, **values}
    # Messages of this module's jobs were never consumed: keep them from other tests' workers.
    redis.Redis.from_url(service_env["NER_REDIS_URL"]).delete("inference")


@pytest.fixture(scope="module")
def client(jobs_env: dict[str, str]) -> TestClient:
    from gateway.app import create_app

    return TestClient(create_app())  # no lifespan: the jobs routes need no loaded model


@pytest.fixture(scope="module")
def worker_runtime(jobs_env: dict[str, str]) -> WorkerRuntime:
    return WorkerRuntime(get_settings())


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> NerEngine:
    return NerEngine.load(tiny_model_dir)


def chunk_task(worker_runtime: WorkerRuntime, wrap: Callable[[Any], Any] | None = None) -> ChunkTask:
    task = worker_runtime.chunk_task()
    task.heartbeat = None
    if wrap is not None:
        load = task.load_predictor
        task.load_predictor = lambda pinned: wrap(load(pinned))
    return task


def run_chunks(runtime: WorkerRuntime, job_id: str, indexes: list[int] | None = None, **kwargs: Any) -> None:
    """Execute chunk tasks of a job in this process, as a worker would."""
    with session_scope() as session:
        all_indexes = session.scalars(
            select(JobChunk.index).where(JobChunk.job_id == uuid.UUID(job_id)).order_by(JobChunk.index)
        ).all()
    for index in all_indexes if indexes is None else indexes:
        processing.process_chunk(
            job_id=uuid.UUID(job_id), index=index, token=uuid.uuid4().hex, task=chunk_task(runtime, **kwargs)
        )


def submit(client: TestClient, texts: list[str], **extra: Any) -> str:
    documents = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(texts)]
    response = client.post("/jobs", json={"documents": documents, **extra})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def counts() -> tuple[int, int, int]:
    """Rows of jobs, documents and chunks: a rejected submission must leave these unchanged."""
    with session_scope() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(table)) for table in (Job, JobDocument, JobChunk)
        )


def all_results(client: TestClient, job_id: str, limit: int) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = client.get(f"/jobs/{job_id}/results", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def test_submit_poll_partial_and_full_results(
    client: TestClient, worker_runtime: WorkerRuntime, engine: NerEngine
) -> None:
    texts = SENTENCES + SENTENCES[:4]  # 10 documents: chunks of 4, 4, 2
    response = client.post(
        "/jobs", json={"documents": [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]}
    )
    assert response.status_code == 202
    body = response.json()
    job_id = body["job_id"]
    assert body == {"job_id": job_id, "status": "queued", "status_url": f"/jobs/{job_id}"}
    assert response.headers["location"] == f"/jobs/{job_id}"

    status = client.get(f"/jobs/{job_id}").json()
    assert (status["status"], status["total"], status["done"], status["failed"], status["percent"]) == (
        "queued", 10, 0, 0, 0.0,
    )  # fmt: skip
    assert status["model_version"] is None  # serving NER_MODEL: no registry version
    with session_scope() as session:
        chunks = session.scalars(select(JobChunk).where(JobChunk.job_id == uuid.UUID(job_id))).all()
        assert sorted((c.seq_start, c.seq_end) for c in chunks) == [(0, 4), (4, 8), (8, 10)]
        assert session.get(Job, uuid.UUID(job_id)).dispatched_at is not None  # the tasks reached Redis

    run_chunks(worker_runtime, job_id, [0])
    status = client.get(f"/jobs/{job_id}").json()
    assert (status["status"], status["done"], status["percent"]) == ("running", 4, 40.0)
    assert status["throughput"] > 0 and status["eta_seconds"] >= 0 and status["started_at"]
    partial = client.get(f"/jobs/{job_id}/results").json()
    assert [item["id"] for item in partial["items"]] == ["doc-0", "doc-1", "doc-2", "doc-3"]

    run_chunks(worker_runtime, job_id, [1, 2])
    status = client.get(f"/jobs/{job_id}").json()
    assert (status["status"], status["done"], status["failed"], status["percent"]) == (
        "succeeded",
        10,
        0,
        100.0,
    )
    assert status["finished_at"] and status["eta_seconds"] == 0.0

    items = all_results(client, job_id, limit=3)
    assert [item["id"] for item in items] == [f"doc-{i}" for i in range(10)]
    expected = engine.predict(texts)
    for item, text, entities in zip(items, texts, expected, strict=True):
        assert item["status"] == "done" and item["model_version"] is None
        assert [(e["entity_group"], e["start"], e["end"]) for e in item["entities"]] == [
            (e.entity_group, e.start, e.end) for e in entities
        ]
        assert all(e["word"] == text[e["start"] : e["end"]] for e in item["entities"])
    assert any(item["entities"] for item in items)

    streamed = client.get(f"/jobs/{job_id}/results", params={"format": "ndjson"})
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in streamed.text.splitlines()] == items


def test_entities_aggregate_counts_from_results(client: TestClient, worker_runtime: WorkerRuntime) -> None:
    texts = [SENTENCES[0], SENTENCES[0], SENTENCES[4], "Google and Google again.", SENTENCES[1]]
    job_id = submit(client, texts)
    run_chunks(worker_runtime, job_id)
    items = all_results(client, job_id, limit=100)
    mentions = Counter((e["word"], e["entity_group"]) for item in items for e in item["entities"])
    documents = Counter(
        key for item in items for key in {(e["word"], e["entity_group"]) for e in item["entities"]}
    )
    assert mentions, "the model found no entities at all"

    body = client.get(f"/jobs/{job_id}/entities").json()
    got = {(row["text"], row["type"]): (row["count"], row["documents"]) for row in body["items"]}
    assert got == {key: (count, documents[key]) for key, count in mentions.items()}
    counts_in_order = [row["count"] for row in body["items"]]
    assert counts_in_order == sorted(counts_in_order, reverse=True)

    wanted = body["items"][0]["type"]
    filtered = client.get(f"/jobs/{job_id}/entities", params={"type": wanted, "limit": 1}).json()["items"]
    assert len(filtered) == 1 and filtered[0]["type"] == wanted


def _upload(client: TestClient, name: str, content: bytes, **fields: str) -> Any:
    return client.post("/jobs", files={"file": (name, io.BytesIO(content))}, data=fields)


def test_a_job_keeps_its_name_or_its_upload_file_name(client: TestClient) -> None:
    named = client.post("/jobs", json={"documents": [{"text": "Paris"}], "name": "press\u0007 review "})
    assert named.status_code == 202, named.text
    assert client.get(f"/jobs/{named.json()['job_id']}").json()["name"] == "press review"
    uploaded = _upload(client, "week 48.jsonl", b'{"text": "Paris"}\n')
    assert uploaded.status_code == 202, uploaded.text
    job = client.get(f"/jobs/{uploaded.json()['job_id']}").json()
    assert job["name"] == "week 48.jsonl"
    assert any(item.get("name") == "week 48.jsonl" for item in client.get("/jobs").json()["items"])
    renamed = client.post(
        "/jobs", files={"file": ("a.jsonl", io.BytesIO(b'{"text": "Paris"}\n'))}, data={"name": "Monday"}
    )
    assert client.get(f"/jobs/{renamed.json()['job_id']}").json()["name"] == "Monday"
    for bad, needle in ((["x"], "must be a string"), ("n" * 201, "at most 200")):
        refused = client.post("/jobs", json={"documents": [{"text": "Paris"}], "name": bad})
        assert refused.status_code == 422 and "name" in refused.text and needle in refused.text


def _stored_documents(job_id: str) -> list[tuple[str, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(JobDocument.client_id, JobDocument.text)
            .where(JobDocument.job_id == uuid.UUID(job_id))
            .order_by(JobDocument.seq)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "content", "fields", "expected"),
    [
        (
            "docs.jsonl",
            b'{"id": "a", "text": "Paris in \\u00e9t\\u00e9"}\n\n'
            b'{"text": "no id here"}\n{"id": 7, "text": "x"}\n',
            {},
            [("a", "Paris in été"), ("3", "no id here"), ("7", "x")],
        ),
        (
            "docs.csv",
            b'id,text,extra\nr1,"Quoted, with comma",1\nr2,"Two\nlines ""quoted""",2\n,no id,3\n',
            {},
            [("r1", "Quoted, with comma"), ("r2", 'Two\nlines "quoted"'), ("5", "no id")],
        ),
        ("docs.tsv", b"text\tid\nhello world\tt1\n", {}, [("t1", "hello world")]),
        (
            "docs.txt",
            "\ufeffFirst line\r\n\nThird line, 日本 🙂\n  \n".encode(),
            {},
            [("1", "First line"), ("3", "Third line, 日本 🙂"), ("4", "  ")],
        ),
        ("upload.bin", b"one\ntwo", {"format": "text"}, [("1", "one"), ("2", "two")]),
    ],
)
def test_upload_formats(
    client: TestClient, name: str, content: bytes, fields: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    response = _upload(client, name, content, **fields)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert _stored_documents(job_id) == expected
    assert client.get(f"/jobs/{job_id}").json()["total"] == len(expected)


@pytest.mark.parametrize(
    ("name", "content", "fields", "status", "needles"),
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', {}, 422, ["line 3", "JSON"]),
        ("bad.jsonl", b'{"text": "ok"}\n{"id": "x"}\n', {}, 422, ["line 2", '"text"']),
        ("bad.jsonl", b'{"text": "ok"}\n["a list"]\n', {}, 422, ["line 2"]),
        (
            "deep.jsonl",
            b'{"text": "ok"}\n' + b"[" * 50_000 + b"]" * 50_000 + b"\n",
            {},
            422,
            ["line 2", "deeply"],
        ),
        ("array.json", b'[{"text": "a"},\n{"text": "b"}]\n', {}, 422, ["line 1", "JSON body"]),
        ("bad.jsonl", b'{"text": "a\\u0000b"}\n', {}, 422, ["line 1", "NUL"]),
        ("bad.jsonl", b'{"text": "\\ud800"}\n', {}, 422, ["line 1", "surrogate"]),
        ("bad.csv", b"id,body\n1,hello\n", {}, 422, ["'text' column", "'body'"]),
        ("bad.csv", b"id,text\n1,hello\n2,hello,extra\n", {}, 422, ["line 3", "fields"]),
        ("bad.txt", b"fine\n\xff\xfe broken\n", {}, 422, ["line 2", "UTF-8"]),
        ("bad.csv", "id,text\n1,caf\u00e9\n".encode("latin-1"), {}, 422, ["line 2", "UTF-8"]),
        ("empty.txt", b"\n\n", {}, 422, ["no documents"]),
        ("data.xyz", b"hello\n", {}, 422, ["format"]),
        ("data.txt", b"hello\n", {"format": "xml"}, 422, ["format", "xml"]),
        ("data.txt", b"hello\n", {"retention_days": "soon"}, 422, ["retention_days"]),
    ],
)
def test_bad_uploads_name_the_problem_and_store_nothing(
    client: TestClient, name: str, content: bytes, fields: dict[str, str], status: int, needles: list[str]
) -> None:
    before = counts()
    response = _upload(client, name, content, **fields)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for needle in needles:
        assert needle in detail
    assert counts() == before


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ({"documents": []}, ["no documents"]),
        ({"documents": [{"text": "ok"}, {"id": "b"}]}, ["documents[1]", '"text"']),
        ({"documents": [{"text": 5}]}, ["documents[0]", "string"]),
        ({"documents": [{"id": [1], "text": "x"}]}, ["documents[0]", '"id"']),
        ({"documents": "nope"}, ["documents"]),
        ({"documents": [{"text": "x"}], "retention_days": 0}, ["retention_days"]),
        ([1, 2], ["object"]),
    ],
)
def test_bad_json_bodies(client: TestClient, body: Any, needles: list[str]) -> None:
    before = counts()
    response = client.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    for needle in needles:
        assert needle in response.json()["detail"]
    assert counts() == before
    malformed = client.post("/jobs", content=b'{"documents": [', headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and "not valid JSON" in malformed.json()["detail"]
    deep = client.post(
        "/jobs", content=b"[" * 50_000 + b"]" * 50_000, headers={"content-type": "application/json"}
    )
    assert deep.status_code == 422 and "nested" in deep.json()["detail"]


def test_limits_answer_413_with_the_limit(client: TestClient) -> None:
    before = counts()
    with settings_env({"NER_DOCUMENT_MAX_CHARS": "20"}):
        response = _upload(client, "d.txt", b"short\n" + b"x" * 21 + b"\n")
        assert response.status_code == 413
        assert "line 2" in response.json()["detail"] and "20" in response.json()["detail"]
        csv_response = _upload(client, "d.csv", b"text\n" + b"y" * 30 + b"\n")
        assert csv_response.status_code == 413 and "20" in csv_response.json()["detail"]
        # A line is read with a bound, so one endless line cannot fill the gateway's memory.
        endless = _upload(client, "d.jsonl", b'{"text": "ok"}\n{"text": "' + b"z" * 200_000)
        assert endless.status_code == 413 and "line 2: longer than" in endless.json()["detail"]
    with settings_env({"NER_JOB_MAX_DOCUMENTS": "3"}):
        response = client.post("/jobs", json={"documents": [{"text": "a"}] * 4})
        assert response.status_code == 413 and "3 documents" in response.json()["detail"]
    with settings_env({"NER_JOB_MAX_TOTAL_CHARS": "10"}):
        response = _upload(client, "d.txt", b"123456\n123456\n")
        assert response.status_code == 413 and "10 characters" in response.json()["detail"]
    with settings_env({"NER_JOB_JSON_MAX_BYTES": "100"}):
        response = client.post("/jobs", json={"documents": [{"text": "z" * 200}]})
        assert response.status_code == 413 and "100 bytes" in response.json()["detail"]
    assert counts() == before


def test_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    payload = {"documents": [{"text": "Kofi Annan in Paris."}]}
    key = f"retry-{uuid.uuid4()}"
    first = client.post("/jobs", json=payload, headers={"Idempotency-Key": key})
    before = counts()
    again = client.post("/jobs", json=payload, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts() == before
    other = client.post("/jobs", json=payload, headers={"Idempotency-Key": f"{key}-2"})
    assert other.json()["job_id"] != first.json()["job_id"]


def test_cancel_drops_queued_chunks_and_keeps_processed_results(
    client: TestClient, worker_runtime: WorkerRuntime
) -> None:
    job_id = submit(client, SENTENCES * 2)  # 12 documents: 3 chunks
    run_chunks(worker_runtime, job_id, [0])
    # Chunk 1 is running (claimed by a task) when the cancel arrives.
    token = "task-running-chunk-1"
    with session_scope() as session:
        now = utcnow()
        claim = processing.claim_chunk(
            session=session, job_id=uuid.UUID(job_id), index=1, token=token,
            stale_before=now - timedelta(minutes=5), max_attempts=3, now=now,
        )  # fmt: skip
        assert claim == processing.CLAIMED

    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelling"
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelling"  # idempotent

    # The queued chunk's message arrives later: dropped. The running chunk finishes.
    run_chunks(worker_runtime, job_id, [2])
    processing.process_chunk(job_id=uuid.UUID(job_id), index=1, token=token, task=chunk_task(worker_runtime))
    status = client.get(f"/jobs/{job_id}").json()
    assert (status["status"], status["done"], status["total"]) == ("cancelled", 8, 12)
    assert status["finished_at"]
    assert [item["id"] for item in all_results(client, job_id, 5)] == [f"doc-{i}" for i in range(8)]
    with session_scope() as session:
        states = dict(
            session.execute(
                select(JobChunk.index, JobChunk.status).where(JobChunk.job_id == uuid.UUID(job_id))
            ).all()
        )
    assert states == {0: ChunkStatus.done, 1: ChunkStatus.done, 2: ChunkStatus.cancelled}

    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_cancel_of_queued_job_is_immediate_and_finished_job_is_409(
    client: TestClient, worker_runtime: WorkerRuntime
) -> None:
    queued = submit(client, SENTENCES[:2])
    assert client.post(f"/jobs/{queued}/cancel").json()["status"] == "cancelled"
    finished = submit(client, SENTENCES[:2])
    run_chunks(worker_runtime, finished)
    response = client.post(f"/jobs/{finished}/cancel")
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]


def test_unknown_job_is_404(client: TestClient) -> None:
    for job_id in (str(uuid.uuid4()), "not-a-uuid"):
        for method, path in [
            ("get", f"/jobs/{job_id}"),
            ("get", f"/jobs/{job_id}/results"),
            ("get", f"/jobs/{job_id}/entities"),
            ("post", f"/jobs/{job_id}/cancel"),
        ]:
            response = getattr(client, method)(path)
            assert response.status_code == 404, path
            assert job_id in response.json()["detail"]


def test_bad_cursor_is_422(client: TestClient) -> None:
    job_id = submit(client, SENTENCES[:1])
    assert client.get(f"/jobs/{job_id}/results", params={"cursor": "garbage!"}).status_code == 422
    assert client.get("/jobs", params={"cursor": "WzFd"}).status_code == 422
    # Well-formed JSON lists of the wrong types or range reached the database (500) before.
    for values in [(True,), (1.5,), ("3",), (None,), (2**31,), (-5,), ([1],)]:
        response = client.get(f"/jobs/{job_id}/results", params={"cursor": encode_cursor(*values)})
        assert response.status_code == 422, (values, response.text)
        assert "cursor" in response.json()["detail"]
    good_id = str(uuid.uuid4())
    for values in [
        (True, good_id),
        ("2026-01-01T00:00:00+00:00", True),
        ("2026-01-01T00:00:00+00:00", "not-a-uuid"),
        ("yesterday", good_id),
        (1, 2),
    ]:
        response = client.get("/jobs", params={"cursor": encode_cursor(*values)})
        assert response.status_code == 422, (values, response.text)
    # A valid cursor still pages.
    assert client.get(f"/jobs/{job_id}/results", params={"cursor": encode_cursor(0)}).status_code == 200


def test_list_jobs_newest_first_with_filter_and_cursor(
    client: TestClient, worker_runtime: WorkerRuntime
) -> None:
    created = [submit(client, [f"Document number {i} about Paris."]) for i in range(3)]
    run_chunks(worker_runtime, created[1])
    first = client.get("/jobs", params={"limit": 2}).json()
    assert [item["job_id"] for item in first["items"]] == created[::-1][:2]
    second = client.get("/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert second["items"][0]["job_id"] == created[0]

    succeeded = client.get("/jobs", params={"status": "succeeded", "limit": 500}).json()["items"]
    assert created[1] in [item["job_id"] for item in succeeded]
    assert {item["status"] for item in succeeded} == {"succeeded"}
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422


def _relabelled_copy(source: Path, target: Path, suffix: str) -> Path:
    """The same weights under other label names: a second, distinguishable model version."""
    target.mkdir()
    for file in source.iterdir():
        if file.name != "config.json":
            (target / file.name).symlink_to(file)
    config = json.loads((source / "config.json").read_text())
    config["id2label"] = {k: v if v == "O" else v + suffix for k, v in config["id2label"].items()}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (target / "config.json").write_text(json.dumps(config))
    return target


def _groups(client: TestClient, job_id: str) -> set[str]:
    return {e["entity_group"] for item in all_results(client, job_id, 100) for e in item["entities"]}


def test_every_document_runs_on_the_version_pinned_at_submission(
    client: TestClient, worker_runtime: WorkerRuntime, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with session_scope() as session:
        first = (session.scalar(select(func.max(ModelVersion.version))) or 0) + 1
    versions = {
        first: _relabelled_copy(tiny_model_dir, tmp_path / "v1", ""),
        first + 1: _relabelled_copy(tiny_model_dir, tmp_path / "v2", "2"),
        first + 2: _relabelled_copy(tiny_model_dir, tmp_path / "v3", "3"),
    }
    for folder in versions.values():
        write_manifest(folder)  # activation requires a manifest whose hashes match (issue 19)
    with session_scope() as session:
        session.add_all([ModelVersion(version=v, path=str(path)) for v, path in versions.items()])
        session.flush()
        registry.activate(session=session, version=first)
    try:
        pinned = submit(client, SENTENCES)
        assert client.get(f"/jobs/{pinned}").json()["model_version"] == first
        with session_scope() as session:
            registry.activate(session=session, version=first + 1)  # promoted while the job waits
        newer = submit(client, SENTENCES)
        run_chunks(worker_runtime, pinned)
        run_chunks(worker_runtime, newer)
        assert client.get(f"/jobs/{pinned}").json()["status"] == "succeeded"
        assert {item["model_version"] for item in all_results(client, pinned, 100)} == {first}
        assert _groups(client, pinned) and _groups(client, pinned) <= {"PER", "ORG", "LOC", "MISC"}
        assert _groups(client, newer) and all(group.endswith("2") for group in _groups(client, newer))

        # A pinned version whose files disappear: the job fails and says which version.
        with session_scope() as session:
            registry.activate(session=session, version=first + 2)
        doomed = submit(client, SENTENCES[:3])
        (versions[first + 2] / "config.json").unlink()
        run_chunks(worker_runtime, doomed)
        status = client.get(f"/jobs/{doomed}").json()
        assert status["status"] == "failed" and f"version {first + 2}" in status["error"]
    finally:
        with session_scope() as session:
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.version.in_(versions))
                .values(status=VersionStatus.retired)
            )


def test_a_failing_document_fails_alone(client: TestClient, worker_runtime: WorkerRuntime) -> None:
    def fragile(predict: Any) -> Any:
        def wrapped(texts: list[str]) -> Any:
            if any("POISON" in text for text in texts):
                raise ValueError("cannot handle this document")
            return predict(texts)

        return wrapped

    job_id = submit(client, [SENTENCES[0], "POISON pill", SENTENCES[1], "   "])
    run_chunks(worker_runtime, job_id, wrap=fragile)
    status = client.get(f"/jobs/{job_id}").json()
    assert (status["status"], status["done"], status["failed"]) == ("succeeded", 3, 1)
    items = {item["id"]: item for item in all_results(client, job_id, 10)}
    assert items["doc-1"]["status"] == "failed" and "cannot handle" in items["doc-1"]["error"]
    assert items["doc-0"]["entities"] and items["doc-3"] == {
        **items["doc-3"],
        "status": "done",
        "entities": [],
    }


def test_a_long_document_is_windowed_not_truncated(client: TestClient, worker_runtime: WorkerRuntime) -> None:
    filler = "the weather was mild and nothing else happened that day . " * 120  # ~7,000 characters
    text = filler + SENTENCES[0]
    job_id = submit(client, [text])
    run_chunks(worker_runtime, job_id)
    (item,) = all_results(client, job_id, 10)
    tail = [e for e in item["entities"] if e["start"] >= len(filler)]
    assert tail, "no entity found past the first window"
    assert all(text[e["start"] : e["end"]] == e["word"] for e in item["entities"])


def test_redelivered_and_duplicate_chunks_count_once(
    client: TestClient, worker_runtime: WorkerRuntime
) -> None:
    job_id = submit(client, SENTENCES[:4] * 2)  # two chunks; chunk 1 keeps the job running
    key = uuid.UUID(job_id)
    first_chunk = (JobChunk.job_id == key) & (JobChunk.index == 0)
    run_chunks(worker_runtime, job_id, [0])
    # The same message again (its ack was lost), and a duplicate that takes over a "stalled" chunk.
    run_chunks(worker_runtime, job_id, [0])
    with session_scope() as session:
        session.execute(
            update(JobChunk)
            .where(first_chunk)
            .values(status=ChunkStatus.running, claimed_by="dead", updated_at=utcnow() - timedelta(hours=1))
        )
    run_chunks(worker_runtime, job_id, [0])
    # A task that died after writing some results: only the missing one is added and counted.
    with session_scope() as session:
        session.execute(delete_results_for_seq(key, 3))
        session.execute(update(Job).where(Job.id == key).values(done=3))
        session.execute(update(JobChunk).where(first_chunk).values(status=ChunkStatus.queued))
    run_chunks(worker_runtime, job_id, [0])
    with session_scope() as session:
        assert session.get(Job, key).done == 4
        assert session.scalar(select(JobChunk.attempts).where(first_chunk)) == 3
    run_chunks(worker_runtime, job_id, [1])
    with session_scope() as session:
        job = session.get(Job, key)
        results = session.scalar(select(func.count()).select_from(JobResult).where(JobResult.job_id == key))
    assert (job.status.value, job.done, job.failed, results) == ("succeeded", 8, 0, 8)


def delete_results_for_seq(job_id: uuid.UUID, seq: int) -> Any:
    from sqlalchemy import delete

    return delete(JobResult).where(JobResult.job_id == job_id, JobResult.seq == seq)


def test_watchdog_resends_stalled_chunks_and_undispatched_jobs(client: TestClient) -> None:
    job_id = submit(client, SENTENCES * 2)  # 3 chunks
    key = uuid.UUID(job_id)
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope() as session:
        session.execute(
            update(JobChunk)
            .where(JobChunk.job_id == key, JobChunk.index == 1)
            .values(status=ChunkStatus.running, claimed_by="dead-worker", attempts=1, updated_at=long_ago)
        )
    sent: list[tuple[uuid.UUID, list[int]]] = []

    def capture(job: uuid.UUID, indexes: Any, *, request_id: str | None = None) -> int:
        sent.append((job, list(indexes)))
        return len(sent[-1][1])

    report = maintenance.run_watchdog(settings=get_settings(), send=capture)
    assert report.requeued_chunks >= 1 and (key, [1]) in sent
    with session_scope() as session:
        chunk = session.get(JobChunk, (key, 1))
        assert (chunk.status, chunk.claimed_by) == (ChunkStatus.queued, None)

    # A job committed while the broker was down (never dispatched): sent by the watchdog.
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == key).values(dispatched_at=None, created_at=long_ago))
    sent.clear()
    maintenance.run_watchdog(settings=get_settings(), send=capture)
    assert (key, [0, 1, 2]) in sent
    with session_scope() as session:
        assert session.get(Job, key, populate_existing=True).dispatched_at is not None


def test_watchdog_resends_queued_chunks_when_the_broker_lost_its_data(client: TestClient) -> None:
    job_id = submit(client, SENTENCES * 2)  # 3 chunks, dispatched: their messages wait in Redis
    key = uuid.UUID(job_id)
    sent: list[tuple[uuid.UUID, list[int]]] = []

    def capture(job: uuid.UUID, indexes: Any, *, request_id: str | None = None) -> int:
        sent.append((job, list(indexes)))
        return len(sent[-1][1])

    maintenance.run_watchdog(settings=get_settings(), send=capture)  # leaves the marker in Redis
    sent.clear()
    report = maintenance.run_watchdog(settings=get_settings(), send=capture)
    assert report.resent_after_broker_loss == 0 and not [s for s in sent if s[0] == key]

    # What a restart without persistence does: the queue and the marker are gone.
    redis.Redis.from_url(get_settings().redis_url).delete("inference", maintenance.BROKER_MARKER)
    report = maintenance.run_watchdog(settings=get_settings(), send=capture)
    assert (key, [0, 1, 2]) in sent and report.resent_after_broker_loss >= 3
    sent.clear()
    maintenance.run_watchdog(settings=get_settings(), send=capture)
    assert not [s for s in sent if s[0] == key]  # once, not on every pass


def test_a_chunk_that_keeps_dying_fails_its_documents(
    client: TestClient, worker_runtime: WorkerRuntime
) -> None:
    job_id = submit(client, SENTENCES[:2])
    key = uuid.UUID(job_id)
    max_attempts = get_settings().job_chunk_max_attempts
    with session_scope() as session:
        session.execute(update(JobChunk).where(JobChunk.job_id == key).values(attempts=max_attempts))
    run_chunks(worker_runtime, job_id)
    status = client.get(f"/jobs/{job_id}").json()
    assert (status["status"], status["failed"]) == ("failed", 2)
    assert all("started" in item["error"] for item in all_results(client, job_id, 10))


def test_retention_purge_deletes_expired_jobs_in_batches(
    client: TestClient, worker_runtime: WorkerRuntime
) -> None:
    short = submit(client, SENTENCES * 2, retention_days=1)
    kept = submit(client, SENTENCES[:2], retention_days=30)
    running = submit(client, SENTENCES[:2], retention_days=1)
    run_chunks(worker_runtime, short)
    run_chunks(worker_runtime, kept)
    assert client.get(f"/jobs/{short}").json()["retention_days"] == 1
    with settings_env({"NER_PURGE_BATCH_ROWS": "5"}):
        purged = maintenance.purge_expired(settings=get_settings(), now=utcnow() + timedelta(days=2))
    assert purged >= 1
    assert client.get(f"/jobs/{short}").status_code == 404
    assert client.get(f"/jobs/{kept}").status_code == 200
    assert client.get(f"/jobs/{running}").status_code == 200  # not finished: never purged
    with session_scope() as session:
        for table in (JobDocument, JobResult, JobChunk):
            assert (
                session.scalar(
                    select(func.count()).select_from(table).where(table.job_id == uuid.UUID(short))
                )
                == 0
            )


def test_beat_purges_expired_jobs(client: TestClient) -> None:
    from shared.core.celery_app import celery_app
    from worker.tasks import purge_expired

    entry = next(e for e in celery_app.conf.beat_schedule.values() if e["task"] == purge_expired.name)
    assert entry["schedule"] == get_settings().purge_interval_s
    job_id = submit(client, SENTENCES[:1])
    client.post(f"/jobs/{job_id}/cancel")
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == uuid.UUID(job_id)).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert purge_expired.apply().get() >= 1
    assert client.get(f"/jobs/{job_id}").status_code == 404


def test_other_keys_jobs_are_invisible(client: TestClient, auth_on: dict[str, str], api_key: Any) -> None:
    from gateway.app import create_app

    app = TestClient(create_app())
    alice, bob, admin = api_key("jobs"), api_key("jobs"), api_key("admin")
    response = app.post("/jobs", json={"documents": [{"text": "x"}]}, headers={"X-API-Key": alice})
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert app.get(f"/jobs/{job_id}", headers={"X-API-Key": alice}).status_code == 200
    assert app.get(f"/jobs/{job_id}", headers={"X-API-Key": bob}).status_code == 404
    assert job_id not in [j["job_id"] for j in app.get("/jobs", headers={"X-API-Key": bob}).json()["items"]]
    assert app.get(f"/jobs/{job_id}", headers={"X-API-Key": admin}).status_code == 200
    assert app.post("/jobs", json={"documents": [{"text": "x"}]}).status_code == 401


def test_the_whole_flow_on_sqlite(jobs_env: dict[str, str], tmp_path: Path) -> None:
    """The default local stack runs on SQLite: batched inserts instead of COPY, json_each, no row locks."""
    from gateway.app import create_app
    from shared.core import migrate
    from shared.core.db import reset_engine

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate.upgrade(url)
    with settings_env({"NER_DATABASE_URL": url}):
        reset_engine()
        try:
            app = TestClient(create_app())
            runtime = WorkerRuntime(get_settings())
            first = app.post(
                "/jobs", files={"file": ("d.txt", io.BytesIO("\n".join(SENTENCES * 2).encode()))}
            )
            assert first.status_code == 202
            job_id = first.json()["job_id"]
            run_chunks(runtime, job_id)
            status = app.get(f"/jobs/{job_id}").json()
            assert (status["status"], status["done"], status["total"]) == ("succeeded", 12, 12)
            items = all_results(app, job_id, limit=5)
            assert [item["id"] for item in items] == [str(i) for i in range(1, 13)]
            mentions = Counter((e["word"], e["entity_group"]) for item in items for e in item["entities"])
            got = {
                (r["text"], r["type"]): r["count"]
                for r in app.get(f"/jobs/{job_id}/entities").json()["items"]
            }
            assert got == dict(mentions) and got

            second = submit(app, SENTENCES[:2])
            assert app.post(f"/jobs/{second}/cancel").json()["status"] == "cancelled"
            listed = app.get("/jobs", params={"limit": 1}).json()
            assert listed["items"][0]["job_id"] == second
            older = app.get("/jobs", params={"limit": 1, "cursor": listed["next_cursor"]}).json()
            assert older["items"][0]["job_id"] == job_id
            assert app.post("/jobs", json={"documents": []}).status_code == 422
            assert maintenance.purge_expired(settings=get_settings(), now=utcnow() + timedelta(days=400)) == 2
            assert app.get(f"/jobs/{job_id}").status_code == 404
        finally:
            reset_engine()
    reset_engine()


def test_an_ingest_only_gateway_takes_jobs_without_loading_torch(
    jobs_env: dict[str, str], log_dir: Path
) -> None:
    """NER_SERVE_PREDICT=false: a real `ner serve` accepts jobs, 503s /predict, and never maps torch."""
    gateway, url = start_gateway({**jobs_env, "NER_SERVE_PREDICT": "false"}, log_dir)
    try:
        accepted = httpx.post(f"{url}/jobs", json={"documents": [{"text": SENTENCES[0]}]}, timeout=30)
        assert accepted.status_code == 202, accepted.text
        predicted = httpx.post(f"{url}/predict/", json={"text": SENTENCES[0]}, timeout=30)
        assert predicted.status_code == 503
        assert "NER_SERVE_PREDICT" in predicted.json()["detail"]
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        assert "model" not in ready.json()["checks"]
        mapped = Path(f"/proc/{gateway.pid}/maps").read_text()
        assert "libtorch" not in mapped and "libtorch" in Path("/proc/self/maps").read_text()
        with session_scope() as session:
            job = session.get(Job, uuid.UUID(accepted.json()["job_id"]))
            assert job is not None and job.total == 1
    finally:
        gateway.stop()
