"""Celery tasks of the inference queue: job chunks, job completion callbacks, and the periodic purge."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from billiard.exceptions import WorkerLostError
from billiard.process import current_process
from celery import Task, signals
from celery.exceptions import TimeLimitExceeded

from shared.core.celery_app import INFERENCE_QUEUE, celery_app
from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.metrics import instrument_chunk_task
from shared.jobs import callbacks, maintenance, processing
from worker import runtime

log = logging.getLogger(__name__)

# A chunk's task retries database errors for as long as they last (every 30 s at most): giving up
# would leave the chunk queued with no message to run it. Other errors are not retried.
DB_BACKOFF_MAX_S = 30.0


def db_backoff(retries: int) -> float:
    """1, 2, 4, ... seconds (capped), with jitter so retrying workers do not return in step."""
    return min(DB_BACKOFF_MAX_S, 2.0 ** min(retries, 10)) * random.uniform(0.8, 1.2)


_serves_inference = True


@signals.celeryd_init.connect
def _note_queues(options: dict[str, Any] | None = None, **_: Any) -> None:
    """The trainer imports this module too (one app); only inference workers load a model."""
    global _serves_inference
    queues = (options or {}).get("queues")
    if queues:
        names = queues.split(",") if isinstance(queues, str) else list(queues)
        _serves_inference = INFERENCE_QUEUE in names


@signals.worker_process_init.connect
def _init_worker_process(**_: Any) -> None:
    if _serves_inference:
        runtime.init_process(getattr(current_process(), "index", None))


@celery_app.task(
    name="ner.jobs.process_chunk",
    bind=True,
    acks_late=True,
    # A lost worker is handled by the watchdog (which counts attempts); re-queueing the same
    # message at once would loop forever on a document that kills the process.
    reject_on_worker_lost=False,
    max_retries=None,
)
def process_chunk(self: Task, job_id: str, index: int) -> str:
    """Run the model over one chunk of a job; idempotent, so re-delivery is harmless."""
    try:
        return processing.process_chunk(
            job_id=uuid.UUID(job_id),
            index=index,
            token=self.request.id,
            task=instrument_chunk_task(runtime.runtime().chunk_task()),  # model time and documents
        )
    except Exception as exc:
        if processing.is_transient_db_error(exc):
            countdown = db_backoff(self.request.retries)
            log.warning(
                "chunk %s/%s: database unavailable (%s); retry in %.1fs", job_id, index, exc, countdown
            )
            raise self.retry(exc=exc, countdown=countdown) from exc
        raise


@signals.task_failure.connect
def _release_lost_chunk(
    sender: Task | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: tuple[Any, ...] | list[Any] | None = None,
    **_: Any,
) -> None:
    """In the worker's main process: a pool child died mid-chunk; send the chunk again now.

    Without this the chunk would wait for its heartbeat to go stale (``NER_JOB_STALL_TIMEOUT_S``).
    The hard time limit kills the child the same way.
    """
    if getattr(sender, "name", None) != process_chunk.name or not task_id or not args:
        return
    if not isinstance(exception, WorkerLostError | TimeLimitExceeded):
        return
    job_id, index = args[0], args[1]
    try:
        with session_scope() as session:
            maintenance.release_lost_chunk(
                session=session, job_id=uuid.UUID(str(job_id)), index=int(index), token=task_id
            )
    except Exception as exc:  # the watchdog still re-sends it once its heartbeat is stale
        log.warning("chunk %s/%s: could not release it after its process died (%s)", job_id, index, exc)


@celery_app.task(
    name="ner.jobs.send_callback",
    bind=True,
    acks_late=True,  # an attempt is claimed in the database: a re-delivered message finds it made
    max_retries=None,  # bounded by NER_CALLBACK_RETRY_FOR_S, which the attempt itself checks
    # One HTTP attempt (NER_CALLBACK_TIMEOUT_S is at most 60) and two short transactions.
    soft_time_limit=90,
    time_limit=120,
)
def send_callback(self: Task, job_id: str) -> str:
    """Make a finished job's next callback attempt; retried later (countdown) while it fails."""
    outcome = callbacks.attempt(job_id=uuid.UUID(job_id), settings=get_settings())
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.state


@celery_app.task(name="ner.jobs.purge_expired", acks_late=True)
def purge_expired() -> int:
    """Delete jobs whose retention ended (beat)."""
    return maintenance.purge_expired(settings=get_settings())


@celery_app.task(name="ner.jobs.purge_uploads", acks_late=True)
def purge_training_uploads() -> int:
    """Delete training uploads whose retention ended (beat; runs here, beside the job purge)."""
    from shared.training import service as training

    with session_scope() as session:
        return training.purge_expired_uploads(session=session, settings=get_settings())
