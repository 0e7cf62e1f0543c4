"""Bulk jobs survive faults, with real processes: gateway and Celery workers as subprocesses,
real Redis (restarted), real Postgres (made unavailable), a worker killed with SIGKILL.

Each test ends by counting rows in Postgres: exactly one result per document, counts that match.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import ChunkStatus, Job, JobChunk, JobResult, JobStatus
from tests.support.processes import ServiceProcess, start_gateway, start_worker, wait_until
from tests.support.services import POSTGRES_ADMIN_URL, RedisServer
from trainer.conll import read_conll

pytestmark = pytest.mark.slow

DOCS_PER_CHUNK = 2
# Fast watchdog for the kill test; for the others a stall timeout longer than the outages.
KILL_ENV = {"NER_JOB_STALL_TIMEOUT_S": "3", "NER_JOB_WATCHDOG_INTERVAL_S": "1"}
STEADY_ENV = {"NER_JOB_STALL_TIMEOUT_S": "10", "NER_JOB_WATCHDOG_INTERVAL_S": "1"}


class Stack:
    """A gateway and (at most) one long-lived worker, started once for the module."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.gateway, self.url = start_gateway(env, log_dir)
        self.worker: ServiceProcess | None = None

    def ensure_worker(self) -> ServiceProcess:
        if self.worker is None or not self.worker.alive():
            self.worker = start_worker({**self.env, **STEADY_ENV}, self.log_dir)
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def submit(self, texts: list[str], request_id: str | None = None) -> str:
        documents = [{"id": f"d{i}", "text": text} for i, text in enumerate(texts)]
        headers = {"X-Request-ID": request_id} if request_id else {}
        response = httpx.post(f"{self.url}/jobs", json={"documents": documents}, headers=headers, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def close(self) -> None:
        self.stop_worker()
        self.gateway.stop()


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str], tiny_model_dir: Path, log_dir: Path) -> Iterator[Stack]:
    env = {**service_env, "NER_MODEL": str(tiny_model_dir), "NER_CHUNK_MAX_DOCUMENTS": str(DOCS_PER_CHUNK)}
    stack = Stack(env, log_dir)
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def sentences(service_env: dict[str, str]) -> list[str]:
    from shared.core.config import get_settings

    return [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=1600)]


def paragraphs(sentences: list[str], count: int, size: int) -> list[str]:
    """Documents of ``size`` CoNLL test sentences: chunks long enough to be caught mid-way."""
    return [" ".join(sentences[i * size : (i + 1) * size]) for i in range(count)]


def job_row(job_id: str) -> Job:
    with session_scope() as session:
        return session.get(Job, uuid.UUID(job_id))


def chunks(job_id: str) -> list[JobChunk]:
    with session_scope() as session:
        return list(session.scalars(select(JobChunk).where(JobChunk.job_id == uuid.UUID(job_id))))


def assert_exactly_one_result_per_document(job_id: str, stack: Stack) -> None:
    key = uuid.UUID(job_id)
    with session_scope() as session:
        job = session.get(Job, key)
        rows = session.execute(
            select(func.count(), func.count(func.distinct(JobResult.seq))).where(JobResult.job_id == key)
        ).one()
        failed = session.scalar(
            select(func.count()).where(JobResult.job_id == key, JobResult.status != "done")
        )
    assert job.status == JobStatus.succeeded, job.error
    assert tuple(rows) == (job.total, job.total)
    assert (job.done, job.failed, failed) == (job.total, 0, 0)
    assert {c.status for c in chunks(job_id)} == {ChunkStatus.done}
    streamed = httpx.get(f"{stack.url}/jobs/{job_id}/results", params={"format": "ndjson"}, timeout=30)
    assert len(streamed.text.splitlines()) == job.total


def task_log_lines(process: ServiceProcess, task_id: str) -> list[dict[str, object]]:
    """The worker's JSON log lines written while running the task ``task_id``."""
    entries = []
    for line in process.log().splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill, or another process's output
                continue
            if entry.get("task_id") == task_id:
                entries.append(entry)
    return entries


def wait_for_status(job_id: str, status: JobStatus, timeout: float, process: ServiceProcess | None) -> None:
    wait_until(lambda: job_row(job_id).status == status, timeout, f"job {job_id} to be {status}", process)


def test_worker_killed_mid_chunk_is_redelivered(stack: Stack, sentences: list[str]) -> None:
    stack.stop_worker()  # this test decides which worker runs what
    env = {**stack.env, **KILL_ENV}
    doomed = start_worker(env, stack.log_dir)
    request_id = f"kill-{uuid.uuid4().hex[:12]}"
    job_id = stack.submit(paragraphs(sentences, 6, 100), request_id)  # 3 chunks of ~11,000 characters
    assert job_row(job_id).request_id == request_id

    def running_chunk() -> JobChunk | None:
        return next((c for c in chunks(job_id) if c.status == ChunkStatus.running), None)

    deadline = time.monotonic() + 120
    while running_chunk() is None:  # polled tightly: the kill must land while the chunk runs
        assert time.monotonic() < deadline and doomed.alive(), doomed.log()[-3000:]
        time.sleep(0.02)
    victim = running_chunk()
    assert victim is not None
    doomed.kill()  # SIGKILL to the worker and its pool process, mid-chunk
    time.sleep(0.5)
    assert job_row(job_id).status == JobStatus.running
    state = {c.index: c for c in chunks(job_id)}[victim.index]
    assert (state.status, state.claimed_by) == (ChunkStatus.running, victim.claimed_by)

    rescuer = start_worker(env, stack.log_dir)
    try:
        wait_for_status(job_id, JobStatus.succeeded, 180, rescuer)
        assert_exactly_one_result_per_document(job_id, stack)
        redone = {c.index: c for c in chunks(job_id)}[victim.index]
        assert redone.attempts == 2 and redone.claimed_by != victim.claimed_by
        assert "stalled" in rescuer.log()
        # The watchdog's re-sent task (a new task id) runs under the job's request id, like the rest.
        resent_lines = task_log_lines(rescuer, redone.claimed_by)
        assert resent_lines, rescuer.log()[-3000:]
        assert {entry.get("request_id") for entry in resent_lines} == {request_id}
    finally:
        rescuer.stop()


def test_redis_restarted_mid_job(stack: Stack, sentences: list[str], redis_server: RedisServer) -> None:
    worker = stack.ensure_worker()
    documents = paragraphs(sentences, 18, 50)
    job_id = stack.submit(documents[:16])  # 8 chunks
    wait_until(lambda: job_row(job_id).done >= DOCS_PER_CHUNK, 120, "the first chunk", worker)
    assert job_row(job_id).status == JobStatus.running  # the fault comes mid-job
    redis_server.stop()
    try:
        # Submitting while the broker is down still works: the job is committed, sent later.
        started = time.monotonic()
        during_outage = stack.submit(documents[16:])
        assert time.monotonic() - started < 20
        assert job_row(during_outage).dispatched_at is None
        time.sleep(1)
    finally:
        redis_server.start()
    wait_for_status(job_id, JobStatus.succeeded, 180, worker)
    assert_exactly_one_result_per_document(job_id, stack)
    wait_for_status(during_outage, JobStatus.succeeded, 120, worker)
    assert_exactly_one_result_per_document(during_outage, stack)
    # Sent by the watchdog, not the request: its tasks still run under the submission's request id.
    request_id = job_row(during_outage).request_id
    assert request_id
    for chunk in chunks(during_outage):
        lines = task_log_lines(worker, str(chunk.claimed_by))
        assert lines and {entry.get("request_id") for entry in lines} == {request_id}, chunk.index


def test_redis_restarted_without_its_data_mid_job(
    stack: Stack, sentences: list[str], redis_server: RedisServer
) -> None:
    """A Redis without persistence (or a flushed one) loses the queued chunks' messages."""
    worker = stack.ensure_worker()
    job_id = stack.submit(paragraphs(sentences, 16, 50))  # 8 chunks
    wait_until(lambda: job_row(job_id).done >= DOCS_PER_CHUNK, 120, "the first chunk", worker)
    assert job_row(job_id).status == JobStatus.running  # the fault comes mid-job
    redis_server.stop()
    shutil.rmtree(redis_server.data_dir)  # the append-only file too: every message is gone
    redis_server.start()
    wait_for_status(job_id, JobStatus.succeeded, 180, worker)
    assert_exactly_one_result_per_document(job_id, stack)
    assert "the broker lost its data" in worker.log()


def _set_connections(database: str, allowed: bool) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )


def test_postgres_unavailable_for_seconds(stack: Stack, sentences: list[str], pg_url: str) -> None:
    worker = stack.ensure_worker()
    job_id = stack.submit(paragraphs(sentences, 16, 50))  # 8 chunks
    wait_until(lambda: job_row(job_id).done >= DOCS_PER_CHUNK, 120, "the first chunk", worker)
    assert job_row(job_id).status == JobStatus.running  # the fault comes mid-job
    database = pg_url.rsplit("/", 1)[1]
    _set_connections(database, allowed=False)  # only this test session's database
    try:
        time.sleep(6)
    finally:
        _set_connections(database, allowed=True)
    wait_for_status(job_id, JobStatus.succeeded, 180, worker)
    assert_exactly_one_result_per_document(job_id, stack)
    assert "database unavailable" in worker.log()  # the tasks did meet the outage, and retried
    # The retrying worker kept its chunks' heartbeat: none was taken over or counted again.
    assert {c.attempts for c in chunks(job_id)} == {1}
