"""Progress that moves within a chunk (issue 20): counters, entity counts and a moving rate.

In-process app, real Postgres, the real tiny model; the chunk runs in this process with the
worker's own runtime, its predictor wrapped to look at the job through the API between slices.
Re-running a chunk that died half-way never counts a document twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.tables import JobChunk, JobResult
from shared.jobs import processing
from shared.jobs.lifecycle import utcnow
from tests.support.auth import settings_env
from worker.runtime import WorkerRuntime

SENTENCES = [
    "Google was founded by Larry Page and Sergey Brin in California.",
    "Kofi Annan met officials of the European Union in Brussels on Monday.",
    "Manchester United beat Arsenal 2-1 at Old Trafford.",
    "Angela Merkel spoke to reporters in Berlin.",
    "Prices rose in Japan and China last year.",
]
SLICE = 8
DOCS = 40  # one chunk of five slices


@pytest.fixture(scope="module")
def env(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    values = {
        "NER_MODEL": str(tiny_model_dir),
        "NER_CHUNK_MAX_DOCUMENTS": "1000",
        "NER_JOB_PROGRESS_DOCUMENTS": str(SLICE),
    }
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


def texts(count: int = DOCS) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(count)]


def submit(client: TestClient, documents: list[str]) -> str:
    response = client.post("/jobs", json={"documents": [{"text": text} for text in documents]})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


class Crash(BaseException):
    """A worker dying mid-chunk (not an error the chunk body handles)."""


def run_chunk(
    runtime: WorkerRuntime,
    job_id: str,
    before_call: Callable[[int, Sequence[str]], None] = lambda call, batch: None,
    clock: Callable[[], Any] = utcnow,
) -> str:
    task = runtime.chunk_task()
    task.heartbeat = None
    task.clock = clock
    load = task.load_predictor
    calls = {"n": 0}

    def wrapped(pinned: Any) -> Any:
        predict = load(pinned)

        def watched(batch: list[str]) -> Any:
            before_call(calls["n"], batch)
            calls["n"] += 1
            return predict(batch)

        return watched

    task.load_predictor = wrapped
    return processing.process_chunk(job_id=uuid.UUID(job_id), index=0, token=uuid.uuid4().hex, task=task)


def result_rows(job_id: str) -> tuple[int, int]:
    with session_scope() as session:
        return session.execute(
            select(func.count(), func.count(func.distinct(JobResult.seq))).where(
                JobResult.job_id == uuid.UUID(job_id)
            )
        ).one()


def test_counters_entity_counts_and_rate_move_within_one_chunk(
    client: TestClient, runtime: WorkerRuntime
) -> None:
    job_id = submit(client, texts())
    with session_scope() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(JobChunk).where(JobChunk.job_id == uuid.UUID(job_id))
            )
            == 1
        )
    seen: list[dict[str, Any]] = []

    def look(call: int, batch: Sequence[str]) -> None:
        status = client.get(f"/jobs/{job_id}").json()
        entities = client.get(f"/jobs/{job_id}/entities").json()["items"]
        seen.append({"batch": len(batch), "status": status, "entities": sum(e["count"] for e in entities)})

    assert run_chunk(runtime, job_id, look) == "processed"
    assert [view["batch"] for view in seen] == [SLICE] * (DOCS // SLICE)
    assert [view["status"]["done"] for view in seen] == [SLICE * i for i in range(DOCS // SLICE)]
    assert all(view["status"]["status"] == "running" for view in seen)
    moving = seen[1:]
    assert all(view["status"]["percent"] > 0 for view in moving)
    assert all(view["entities"] > 0 for view in moving)  # top entities while the job runs
    assert [view["entities"] for view in moving] == sorted(view["entities"] for view in moving)
    assert all(view["status"]["rate"] and view["status"]["eta_seconds"] is not None for view in moving)
    final = client.get(f"/jobs/{job_id}").json()
    assert (final["status"], final["done"], final["failed"]) == ("succeeded", DOCS, 0)
    assert final["eta_seconds"] == 0.0


def test_a_chunk_that_died_half_way_resumes_without_counting_twice(
    client: TestClient, runtime: WorkerRuntime
) -> None:
    documents = texts()
    reference = submit(client, documents)
    run_chunk(runtime, reference)
    clean = client.get(f"/jobs/{reference}/entities", params={"limit": 1000}).json()["items"]

    job_id = submit(client, documents)

    def die_on_third(call: int, batch: Sequence[str]) -> None:
        if call == 2:
            raise Crash

    with pytest.raises(Crash):
        run_chunk(runtime, job_id, die_on_third)
    half = client.get(f"/jobs/{job_id}").json()
    assert (half["status"], half["done"], half["failed"]) == ("running", 2 * SLICE, 0)
    assert result_rows(job_id) == (2 * SLICE, 2 * SLICE)

    # Its heartbeat is stale: another delivery takes the chunk over and does only what is left.
    later = utcnow() + timedelta(seconds=get_settings().job_stall_timeout_s + 5)
    sizes: list[int] = []
    assert (
        run_chunk(runtime, job_id, lambda call, batch: sizes.append(len(batch)), clock=lambda: later)
        == "processed"
    )
    assert sum(sizes) == DOCS - 2 * SLICE
    done = client.get(f"/jobs/{job_id}").json()
    assert (done["status"], done["done"], done["failed"]) == ("succeeded", DOCS, 0)
    assert result_rows(job_id) == (DOCS, DOCS)
    assert client.get(f"/jobs/{job_id}/entities", params={"limit": 1000}).json()["items"] == clean

    # A late duplicate of the message changes nothing.
    assert run_chunk(runtime, job_id, clock=lambda: later) == "skipped"
    assert client.get(f"/jobs/{job_id}").json()["done"] == DOCS
    assert result_rows(job_id) == (DOCS, DOCS)


def test_slices_follow_the_time_interval_when_documents_are_slow(
    client: TestClient, runtime: WorkerRuntime
) -> None:
    job_id = submit(client, texts(24))
    sizes: list[int] = []

    def slow(call: int, batch: Sequence[str]) -> None:
        sizes.append(len(batch))
        time.sleep(0.05 * len(batch))  # 20 documents a second

    values = {
        "NER_JOB_PROGRESS_DOCUMENTS": "1000",
        "NER_JOB_PROGRESS_INTERVAL_S": "0.2",
        "NER_ENGINE_BATCH_SIZE": "2",
    }
    with settings_env(values):
        run_chunk(runtime.__class__(get_settings()), job_id, slow)
    assert sum(sizes) == 24
    assert len(sizes) >= 4 and max(sizes) <= 6, sizes  # about 0.2 s of documents each, not one call


def test_the_moving_rate_follows_recent_speed() -> None:
    rate = processing.moving_rate(None, 10, 2.0)
    assert rate == 5.0
    for _ in range(120):  # four minutes at 20 documents a second
        rate = processing.moving_rate(rate, 40, 2.0)
    assert rate == pytest.approx(20.0, rel=0.01)
    for _ in range(15):  # then 30 s at 2 a second: the rate has mostly followed
        rate = processing.moving_rate(rate, 4, 2.0)
    assert 2.0 < rate < 10.0
    assert processing.moving_rate(rate, 30, 0.0) == pytest.approx(rate + 1.0)
