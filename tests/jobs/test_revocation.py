"""Revoking a key stops its work: jobs (processed results kept) and training runs.

Real Postgres, the real model and the real chunk body (``processing.process_chunk``), run here so
the test decides which chunk is mid-way when the key is revoked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import delete, select, update

from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.tables import (
    ApiKey,
    ChunkStatus,
    Job,
    JobChunk,
    JobResult,
    JobStatus,
    RunStatus,
    TrainingRun,
    utcnow,
)
from shared.jobs import processing
from shared.jobs import service as jobs
from shared.jobs.ingest import IncomingDocument
from shared.keys import service as keys
from shared.keys.owner import Owner
from tests.support.auth import settings_env
from trainer.runs import execute_run
from worker.runtime import WorkerRuntime

TEXTS = [
    "Kofi Annan met officials of the European Union in Brussels.",
    "Angela Merkel spoke to reporters in Berlin.",
    "Manchester United beat Arsenal at Old Trafford.",
    "Google was founded by Larry Page in California.",
    "Prices rose in Japan and China last year.",
    "The New York Stock Exchange fell on Monday.",
]


@pytest.fixture(scope="module")
def runtime(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[WorkerRuntime]:
    with settings_env({"NER_MODEL": str(tiny_model_dir), "NER_CHUNK_MAX_DOCUMENTS": "2"}):
        yield WorkerRuntime(get_settings())
    # Messages of these jobs were never consumed: keep them from other tests' workers.
    redis.Redis.from_url(service_env["NER_REDIS_URL"]).delete("inference", "training")


def new_key() -> int:
    with session_scope() as session:
        return keys.create_key(session=session, scope="jobs", name="revocation-test").id


def new_job(key_id: int) -> uuid.UUID:
    with session_scope() as session:
        job, _ = jobs.create_job(
            session=session,
            settings=get_settings(),
            documents=[
                IncomingDocument(client_id=f"d{i}", text=text, where=f"documents[{i}]")
                for i, text in enumerate(TEXTS)
            ],
            owner=Owner(key_id=key_id, admin=False),
        )
        return job.id


CREATED_RUNS: list[uuid.UUID] = []


@pytest.fixture(scope="module", autouse=True)
def drop_created_runs() -> Iterator[None]:
    """Another key's run is left queued on purpose: later modules must not see it as training."""
    yield
    with session_scope() as session:
        session.execute(delete(TrainingRun).where(TrainingRun.id.in_(CREATED_RUNS)))


def new_run(key_id: int, status: RunStatus) -> uuid.UUID:
    with session_scope() as session:
        run = TrainingRun(
            status=status, data={"train": "x.conll"}, params={}, base_model="b", api_key_id=key_id
        )
        session.add(run)
        session.flush()
        CREATED_RUNS.append(run.id)
        return run.id


def run_chunk(runtime: WorkerRuntime, job_id: uuid.UUID, index: int, token: str | None = None) -> str:
    task = runtime.chunk_task()
    task.heartbeat = None
    return processing.process_chunk(job_id=job_id, index=index, token=token or uuid.uuid4().hex, task=task)


def claim(runtime: WorkerRuntime, job_id: uuid.UUID, index: int, token: str) -> str:
    """What a worker does first with a chunk: the chunk is now running, mid-way."""
    now = utcnow()
    with session_scope() as session:
        return processing.claim_chunk(
            session=session,
            job_id=job_id,
            index=index,
            token=token,
            stale_before=now,
            max_attempts=3,
            now=now,
        )


def state(job_id: uuid.UUID) -> tuple[Job, dict[int, ChunkStatus], set[int]]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        rows = session.execute(select(JobChunk.index, JobChunk.status).where(JobChunk.job_id == job_id))
        chunks = {index: status for index, status in rows}
        seqs = set(session.scalars(select(JobResult.seq).where(JobResult.job_id == job_id)))
    return job, chunks, seqs


def run_row(run_id: uuid.UUID) -> TrainingRun:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        session.expunge(run)
        return run


def test_revoking_a_key_stops_its_running_job_keeps_results_and_cancels_its_runs(
    runtime: WorkerRuntime,
) -> None:
    key_id = new_key()
    other_key = new_key()
    job_id = new_job(key_id)  # chunks 0, 1, 2 of two documents each
    bystander = new_job(other_key)
    assert run_chunk(runtime, job_id, 0) == "processed"
    token = uuid.uuid4().hex
    assert claim(runtime, job_id, 1, token) == processing.CLAIMED  # chunk 1 is running
    queued_run, running_run = new_run(key_id, RunStatus.queued), new_run(key_id, RunStatus.running)
    others_run = new_run(other_key, RunStatus.queued)

    with session_scope() as session:
        keys.revoke_key(session=session, ident=str(key_id))

    job, chunks, _ = state(job_id)
    assert job.status == JobStatus.cancelling  # the running chunk may finish; nothing else runs
    assert chunks == {0: ChunkStatus.done, 1: ChunkStatus.running, 2: ChunkStatus.cancelled}
    assert run_row(queued_run).status == RunStatus.cancelled
    assert run_row(running_run).cancel_requested  # the trainer stops it at its next check
    assert execute_run(run_id=running_run, settings=get_settings()) == RunStatus.cancelled
    # Another key's work is untouched.
    assert state(bystander)[0].status == JobStatus.queued
    assert run_row(others_run).status == RunStatus.queued

    # A re-delivered message of the dropped chunk does nothing; the running one finishes.
    assert run_chunk(runtime, job_id, 2) == "skipped"
    assert run_chunk(runtime, job_id, 1, token) == "processed"
    job, chunks, seqs = state(job_id)
    assert job.status == JobStatus.cancelled
    assert seqs == {0, 1, 2, 3}  # processed results kept; chunk 2's documents never ran
    assert (job.done, job.failed) == (4, 0)


def test_a_key_revoked_behind_the_services_back_still_stops_workers_and_the_trainer(
    runtime: WorkerRuntime,
) -> None:
    """The workers and the trainer check revocation themselves (e.g. a key revoked in SQL)."""
    key_id = new_key()
    job_id = new_job(key_id)
    run_id = new_run(key_id, RunStatus.queued)
    with session_scope() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))

    assert run_chunk(runtime, job_id, 0) == "skipped"
    job, chunks, seqs = state(job_id)
    assert job.status == JobStatus.cancelled and seqs == set()
    assert set(chunks.values()) == {ChunkStatus.cancelled}

    assert execute_run(run_id=run_id, settings=get_settings()) == RunStatus.cancelled
    run = run_row(run_id)
    assert run.status == RunStatus.cancelled and run.model_version is None
