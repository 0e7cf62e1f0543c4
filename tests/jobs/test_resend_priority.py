"""A chunk sent again after its worker died goes before the backlog (issue 21): the recovery queue.

A real ``ner worker`` (one process) runs a job of many one-document chunks; a second job's chunk is
made to look abandoned by a dead worker and is re-sent by the watchdog's own function. It must be
taken as soon as the chunk being run is done, not after the backlog queued before it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from shared.core.celery_app import RECOVERY_QUEUE, WORKER_QUEUES, RecoveryFirstCycle, celery_app, configure
from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.tables import ChunkStatus, Job, JobChunk, JobStatus
from shared.jobs import lifecycle, maintenance
from tests.scaleout.hosts import rabbitmq_unavailable, rabbitmq_vhost
from tests.support.processes import ServiceProcess, start_gateway, start_worker, wait_until

pytestmark = pytest.mark.slow

BACKLOG = 16


def test_the_recovery_queue_is_polled_first_and_the_others_take_turns() -> None:
    cycle = RecoveryFirstCycle()
    cycle.update(["inference", "shadow", RECOVERY_QUEUE])
    assert cycle.consume(3) == [RECOVERY_QUEUE, "inference", "shadow"]
    cycle.rotate("inference")  # a message came from there: the others' turn next
    assert cycle.consume(3) == [RECOVERY_QUEUE, "shadow", "inference"]
    assert WORKER_QUEUES[0] == RECOVERY_QUEUE


@pytest.fixture(params=["redis", "amqp"])
def broker_env(request: pytest.FixtureRequest, service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The session's Redis as the broker, or a RabbitMQ vhost of the test's own (here too)."""
    if request.param == "redis":
        yield {"NER_BROKER_URL": ""}
        return
    reason = rabbitmq_unavailable()
    if reason:
        pytest.skip(reason)
    with rabbitmq_vhost() as vhost:
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        os.environ["NER_BROKER_URL"] = url
        _reconfigure()
        try:
            yield {"NER_BROKER_URL": url}
        finally:
            os.environ.pop("NER_BROKER_URL", None)
            _reconfigure()


def _reconfigure() -> None:
    get_settings.cache_clear()
    configure(celery_app, get_settings())  # drops the pooled connections to the other broker


@pytest.fixture
def stack(
    service_env: dict[str, str], broker_env: dict[str, str], tiny_model_dir: Path, log_dir: Path
) -> Iterator[str]:
    env = {**service_env, **broker_env, "NER_MODEL": str(tiny_model_dir), "NER_CHUNK_MAX_DOCUMENTS": "1"}
    gateway, url = start_gateway(env, log_dir)
    worker: ServiceProcess | None = None
    try:
        worker = start_worker(env, log_dir)
        yield url
    finally:
        if worker is not None:
            worker.stop()
        gateway.stop()


def _submit(url: str, texts: list[str]) -> uuid.UUID:
    documents = [{"id": f"d{i}", "text": text} for i, text in enumerate(texts)]
    response = httpx.post(f"{url}/jobs", json={"documents": documents}, timeout=30)
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["job_id"])


def test_a_resent_chunk_is_taken_before_the_backlog(stack: str, broker_env: dict[str, str]) -> None:
    url = stack
    # Each chunk is one document of a few windows: long enough that the backlog is still queued.
    paragraph = " ".join(f"Kofi Annan met Angela Merkel in Paris on day {i}." for i in range(100))
    backlog = _submit(url, [paragraph] * BACKLOG)
    lost = _submit(url, ["Sergey Brin visited Berlin."])  # its own message waits behind the backlog
    # What a worker that died running it leaves: running, claimed, its heartbeat long stopped.
    long_ago = lifecycle.utcnow() - timedelta(days=30)
    with session_scope() as session:
        session.execute(
            update(JobChunk)
            .where(JobChunk.job_id == lost, JobChunk.index == 0)
            .values(status=ChunkStatus.running, claimed_by="dead-worker", updated_at=long_ago)
        )
    with session_scope() as session:
        requeued = maintenance.requeue_stalled_chunks(
            session=session, stale_before=long_ago + timedelta(seconds=1)
        )
    assert requeued == 1

    def done(job_id: uuid.UUID) -> bool:
        with session_scope() as session:
            return session.get(Job, job_id).status == JobStatus.succeeded

    wait_until(lambda: done(lost), 120, "the re-sent chunk")
    with session_scope() as session:
        statuses = session.scalars(select(JobChunk.status).where(JobChunk.job_id == backlog)).all()
    finished_before = sum(status == ChunkStatus.done for status in statuses)
    print(f"backlog chunks done before the re-sent one: {finished_before}")
    # Redis: one chunk was running when it was re-sent, and perhaps the next one already taken.
    # RabbitMQ has no order between queues: each free slot goes to one of them at random, so the
    # re-sent chunk waits for a few backlog chunks (more than 10 of 16: 1 run in ~500). Sent to the
    # inference queue instead, it waits for all sixteen on either broker.
    bound = 10 if broker_env["NER_BROKER_URL"].startswith("amqp://") else 2
    assert finished_before <= bound, f"{finished_before} backlog chunks went first"
    assert len(statuses) == BACKLOG
