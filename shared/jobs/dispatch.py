"""Sending chunk tasks to the broker, after the job's transaction committed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

import kombu.exceptions
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.core.logging import request_id_var
from shared.core.tables import ChunkStatus, Job, JobChunk
from shared.jobs.lifecycle import utcnow

log = logging.getLogger(__name__)

PROCESS_CHUNK = "ner.jobs.process_chunk"
SEND_CALLBACK = "ner.jobs.send_callback"
# A broker that does not answer at once is left to the watchdog: the submission is already safe.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
BROKER_ERRORS = (kombu.exceptions.OperationalError, redis.RedisError, OSError)


def send_chunks(
    job_id: uuid.UUID, indexes: Iterable[int], *, request_id: str | None = None, recovery: bool = False
) -> int:
    """Publish one ``process_chunk`` task per chunk index over one connection; raises on broker errors.

    The tasks carry ``request_id`` (the job's own, when the watchdog sends them outside any
    request), else the id of the request being served. ``recovery``: chunks sent again after their
    worker died go to the recovery queue, which workers take before the backlog.
    """
    from shared.core.celery_app import RECOVERY_QUEUE, celery_app

    indexes = list(indexes)
    if not indexes:
        return 0
    # celery_signals stamps the header from this variable: the watchdog's re-sent tasks would
    # otherwise not be traceable to the submission.
    token = request_id_var.set(request_id or request_id_var.get())
    sent = 0
    try:
        with celery_app.producer_or_acquire() as producer:
            for index in indexes:
                celery_app.send_task(
                    PROCESS_CHUNK,
                    args=[str(job_id), index],
                    producer=producer,
                    **({"queue": RECOVERY_QUEUE} if recovery else {}),  # else its route: inference
                    retry=True,
                    retry_policy=PUBLISH_RETRY,
                )
                sent += 1
    finally:
        request_id_var.reset(token)
    return sent


def resend_chunks(job_id: uuid.UUID, indexes: Iterable[int], *, request_id: str | None = None) -> int:
    """``send_chunks`` for chunks whose worker died: to the recovery queue, ahead of the backlog."""
    return send_chunks(job_id, indexes, request_id=request_id, recovery=True)


def dispatch_job(*, session: Session, job_id: uuid.UUID) -> bool:
    """Send a task for each queued chunk and mark the job dispatched; False if the broker is down.

    A job that is not dispatched stays safe in the database; the workers' watchdog sends it later.
    """
    indexes = session.scalars(
        select(JobChunk.index)
        .where(JobChunk.job_id == job_id, JobChunk.status == ChunkStatus.queued)
        .order_by(JobChunk.index)
    ).all()
    session.rollback()  # no transaction (and no lock) stays open while publishing
    try:
        send_chunks(job_id, indexes)
    except BROKER_ERRORS as exc:
        log.warning("job %s: the broker is unavailable (%s); the watchdog will send its chunks", job_id, exc)
        return False
    session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=utcnow()))
    session.commit()
    return True


def send_callback(job_id: uuid.UUID) -> bool:
    """Publish a ``send_callback`` task for a finished job; False (logged) when the broker is down.

    Best effort: the job row says the callback is pending, and the watchdog sends it if this fails.
    """
    from shared.core.celery_app import celery_app

    try:
        celery_app.send_task(SEND_CALLBACK, args=[str(job_id)], retry=True, retry_policy=PUBLISH_RETRY)
    except BROKER_ERRORS as exc:
        log.warning(
            "job %s: the broker is unavailable (%s); the watchdog will send its callback", job_id, exc
        )
        return False
    return True
