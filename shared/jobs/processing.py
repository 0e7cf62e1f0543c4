"""One chunk of a job, processed idempotently: any number of deliveries give one result per document.

The steps, each its own short transaction: read the job (its pinned model), claim the chunk,
read the documents that have no result yet, run the model over them in slices (every
NER_JOB_PROGRESS_DOCUMENTS documents or NER_JOB_PROGRESS_INTERVAL_S seconds), and write each slice's
results with an insert that ignores rows already there, adding to the job's counts only what was
really inserted: progress, entity counts and the job's moving rate move within a chunk, and a
re-run chunk never counts a document twice. The job's options (shared/jobs/options.py) shape each
document's stored entities and redacted text.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.tables import (
    ApiKey,
    ChunkStatus,
    DocumentStatus,
    Job,
    JobChunk,
    JobDocument,
    JobResult,
    JobStatus,
)
from shared.jobs import lifecycle
from shared.jobs.dispatch import send_callback
from shared.jobs.options import JobOptions, redact_key, shape
from shared.jobs.service import PinnedModel
from shared.predict.schemas import ENTITY_FIELDS

log = logging.getLogger(__name__)

Predict = Callable[[list[str]], Sequence[Sequence[Any]]]


class ModelUnavailable(Exception):
    """The job's pinned model cannot be loaded; no retry will change that."""


class Heartbeat(Protocol):
    """Keeps a chunk's ``updated_at`` fresh while a live process owns it."""

    def track(self, job_id: uuid.UUID, index: int, token: str) -> None: ...
    def release(self, job_id: uuid.UUID, index: int, *, hold: bool = False) -> None:
        """Stop beating; ``hold``: keep beating a while, this process retries the chunk."""


def is_transient_db_error(exc: BaseException) -> bool:
    """A database error that a retry may not see again (connection lost, server restarting, locked)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@dataclass(slots=True)
class Outcome:
    status: DocumentStatus
    entities: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    redacted_text: str | None = None


def entity_dict(entity: Any) -> dict[str, Any]:
    """An engine entity (an ``Entity`` or a dict) as stored: plain JSON types only."""
    if isinstance(entity, dict):
        word, group, score, start, end = (entity[key] for key in ENTITY_FIELDS)
    else:
        word, group, score, start, end = (
            entity.word,
            entity.entity_group,
            entity.score,
            entity.start,
            entity.end,
        )
    return {
        "word": word,
        "entity_group": group,
        "score": round(float(score), 6),
        "start": int(start),
        "end": int(end),
    }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def run_documents(predict: Predict, texts: Sequence[str]) -> list[Outcome]:
    """Predict all texts in one call; if that fails, one by one, so one bad document fails alone."""
    outcomes: list[Outcome | None] = [None] * len(texts)
    todo = []
    for i, text in enumerate(texts):
        if text.strip():
            todo.append(i)
        else:
            outcomes[i] = Outcome(DocumentStatus.done)
    if todo:
        try:
            predictions = predict([texts[i] for i in todo])
            for i, entities in zip(todo, predictions, strict=True):
                outcomes[i] = Outcome(DocumentStatus.done, [entity_dict(e) for e in entities])
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:
            log.warning("a batch of %d documents failed (%s); retrying them one by one", len(todo), exc)
            for i in todo:
                try:
                    (entities,) = predict([texts[i]])
                    outcomes[i] = Outcome(DocumentStatus.done, [entity_dict(e) for e in entities])
                except SoftTimeLimitExceeded:
                    raise
                except Exception as doc_exc:
                    outcomes[i] = Outcome(DocumentStatus.failed, error=_describe(doc_exc))
    return [outcome for outcome in outcomes if outcome is not None]


# What claim_chunk decided.
CLAIMED, SKIP, EXHAUSTED = "claimed", "skip", "exhausted"


def claim_chunk(
    *,
    session: Session,
    job_id: uuid.UUID,
    index: int,
    token: str,
    stale_before: datetime,
    max_attempts: int,
    now: datetime,
) -> str:
    """Mark the chunk running for ``token``; SKIP when done, dropped, or alive in another task.

    The same token (a Celery retry after a database error) resumes without counting an attempt; a
    chunk whose heartbeat stopped is taken over. EXHAUSTED: started ``max_attempts`` times already.
    """
    job = lifecycle.lock_job(session, job_id)
    row = session.execute(
        select(JobChunk, (JobChunk.updated_at < stale_before).label("stale"))
        .where(JobChunk.job_id == job_id, JobChunk.index == index)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if job is None or row is None:
        return SKIP
    chunk, stale = row
    resume = chunk.status == ChunkStatus.running and chunk.claimed_by == token
    if job.status in lifecycle.ACTIVE and not resume and _key_revoked(session, job.api_key_id):
        # Revoked by a path that did not cancel its jobs: stop here, keeping what was processed.
        lifecycle.cancel_job(session=session, job_id=job_id, now=now)
        log.warning("job %s: its API key was revoked; cancelled", job_id)
    if job.status == JobStatus.cancelling and resume:
        return CLAIMED  # the running chunk finishes (here: after a retry) even though the job is cancelling
    if job.status not in lifecycle.ACTIVE:
        if chunk.status == ChunkStatus.queued:
            chunk.status = ChunkStatus.cancelled
            lifecycle.finalize_job(session=session, job_id=job_id, now=now)
        return SKIP
    if chunk.status in (ChunkStatus.done, ChunkStatus.cancelled):
        return SKIP
    if chunk.status == ChunkStatus.running and not resume and not stale:
        return SKIP
    if not resume:
        if chunk.attempts >= max_attempts:
            return EXHAUSTED
        chunk.attempts += 1
    chunk.status = ChunkStatus.running
    chunk.claimed_by = token
    chunk.updated_at = now
    if job.status == JobStatus.queued:
        job.status = JobStatus.running
        job.started_at = now
    return CLAIMED


def _key_revoked(session: Session, api_key_id: int | None) -> bool:
    if api_key_id is None:
        return False
    return session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == api_key_id)) is not None


def pending_documents(*, session: Session, job_id: uuid.UUID, index: int) -> list[tuple[int, str]]:
    """(seq, text) of the chunk's documents that have no result yet, in order."""
    chunk = session.get(JobChunk, (job_id, index))
    if chunk is None:
        return []
    done = select(JobResult.seq).where(
        JobResult.job_id == job_id, JobResult.seq >= chunk.seq_start, JobResult.seq < chunk.seq_end
    )
    rows = session.execute(
        select(JobDocument.seq, JobDocument.text)
        .where(
            JobDocument.job_id == job_id,
            JobDocument.seq >= chunk.seq_start,
            JobDocument.seq < chunk.seq_end,
            JobDocument.seq.not_in(done),
        )
        .order_by(JobDocument.seq)
    )
    return [(seq, text) for seq, text in rows]


# One statement with four array parameters: a multi-row VALUES list of thousands of placeholders
# costs more to build and parse than the insert itself.
_PG_INSERT_RESULTS = sql_text(
    """
    INSERT INTO job_results (job_id, seq, status, entities, error, model_version, processed_at,
                             redacted_text)
    SELECT CAST(:job_id AS uuid), t.seq, t.status, CAST(t.entities AS jsonb), t.error,
           CAST(:model_version AS integer), CAST(:processed_at AS timestamptz), t.redacted_text
    FROM unnest(CAST(:seqs AS integer[]), CAST(:statuses AS varchar[]), CAST(:entities AS text[]),
                CAST(:errors AS text[]), CAST(:redacted AS text[]))
         AS t(seq, status, entities, error, redacted_text)
    ON CONFLICT (job_id, seq) DO NOTHING
    RETURNING status
    """
)


def _insert_new_results(
    session: Session,
    job_id: uuid.UUID,
    seqs: Sequence[int],
    outcomes: Sequence[Outcome],
    model_version: int | None,
    now: datetime,
) -> list[DocumentStatus]:
    """Insert the rows not there yet; returns the statuses of the rows really inserted."""
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            _PG_INSERT_RESULTS,
            {
                "job_id": job_id,
                "model_version": model_version,
                "processed_at": now,
                "seqs": list(seqs),
                "statuses": [outcome.status.value for outcome in outcomes],
                "entities": [json.dumps(outcome.entities, ensure_ascii=False) for outcome in outcomes],
                "errors": [outcome.error for outcome in outcomes],
                "redacted": [outcome.redacted_text for outcome in outcomes],
            },
        )
        return [DocumentStatus(status) for status in rows.scalars()]
    statement = (
        sqlite_insert(JobResult.__table__)
        .on_conflict_do_nothing(index_elements=["job_id", "seq"])
        .returning(JobResult.__table__.c.status)
    )
    rows = [
        {
            "job_id": job_id,
            "seq": seq,
            "status": outcome.status,
            "entities": outcome.entities,
            "error": outcome.error,
            "model_version": model_version,
            "processed_at": now,
            "redacted_text": outcome.redacted_text,
        }
        for seq, outcome in zip(seqs, outcomes, strict=True)
    ]
    return list(session.connection().execute(statement, rows).scalars())


# The job's moving rate: an exponentially weighted average over about this many seconds, so its
# ETA follows the last half minute rather than the whole run (model loads, other jobs' chunks).
RATE_WINDOW_S = 30.0


def moving_rate(previous: float | None, added: int, elapsed_s: float) -> float | None:
    """The job's documents a second after ``added`` more in ``elapsed_s`` (any worker's, any chunk's)."""
    if elapsed_s <= 0:
        # Two writes at the same instant: their documents still count, spread over the window.
        return None if previous is None else previous + added / RATE_WINDOW_S
    instant = added / elapsed_s
    if previous is None:
        return instant
    weight = math.exp(-elapsed_s / RATE_WINDOW_S)
    return previous * weight + instant * (1.0 - weight)


def record_slice(
    *,
    session: Session,
    job_id: uuid.UUID,
    seqs: Sequence[int],
    outcomes: Sequence[Outcome],
    model_version: int | None,
    now: datetime,
) -> int:
    """Insert results (keeping rows already there); count only the new rows; returns how many."""
    if not seqs:
        return 0
    inserted = _insert_new_results(session, job_id, seqs, outcomes, model_version, now)
    if not inserted:
        return 0
    done = sum(1 for status in inserted if status == DocumentStatus.done)
    job = lifecycle.lock_job(session, job_id)
    if job is None:
        return 0
    previous = lifecycle.as_utc(job.progress_at) or lifecycle.as_utc(job.started_at) or now
    job.rate = moving_rate(job.rate, len(inserted), (now - previous).total_seconds())
    job.progress_at = now
    job.done += done
    job.failed += len(inserted) - done
    return len(inserted)


def close_chunk(*, session: Session, job_id: uuid.UUID, index: int, now: datetime) -> Job | None:
    """Mark the chunk done and finish the job if nothing is left; returns the job."""
    lifecycle.lock_job(session, job_id)  # the job's row before its chunk's, as every writer does
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.index == index)
        .values(status=ChunkStatus.done, updated_at=now)
    )
    return lifecycle.finalize_job(session=session, job_id=job_id, now=now)


def record_results(
    *,
    session: Session,
    job_id: uuid.UUID,
    index: int,
    seqs: Sequence[int],
    outcomes: Sequence[Outcome],
    model_version: int | None,
    now: datetime,
) -> Job | None:
    """Insert results (keeping rows already there), count only new rows, close the chunk, maybe the job."""
    record_slice(
        session=session, job_id=job_id, seqs=seqs, outcomes=outcomes, model_version=model_version, now=now
    )
    return close_chunk(session=session, job_id=job_id, index=index, now=now)


def _callback_due(job: Job | None) -> uuid.UUID | None:
    if (
        job is not None
        and job.status in lifecycle.FINISHED
        and job.callback_state == lifecycle.CALLBACK_PENDING
    ):
        return job.id
    return None


@dataclass
class ChunkTask:
    """Everything ``process_chunk`` needs besides the database."""

    settings: Settings
    load_predictor: Callable[[PinnedModel], Predict]
    heartbeat: Heartbeat | None = None
    clock: Callable[[], datetime] = lifecycle.utcnow


def process_chunk(*, job_id: uuid.UUID, index: int, token: str, task: ChunkTask) -> str:
    """Process chunk ``index`` of a job; returns what happened (processed, skipped, failed, gone).

    Safe under re-delivery, concurrent duplicates and crashes at any point. Database errors
    propagate (the caller retries them); a failing document is recorded as failed.
    """
    try:
        outcome = _process_chunk(job_id=job_id, index=index, token=token, task=task)
    except BaseException as exc:
        if task.heartbeat is not None:
            # After a database error this process retries the chunk: its heartbeat goes on meanwhile,
            # so the watchdog does not hand a chunk with a live owner to another task.
            task.heartbeat.release(job_id, index, hold=is_transient_db_error(exc))
        raise
    if task.heartbeat is not None:
        task.heartbeat.release(job_id, index)
    return outcome


def _process_chunk(*, job_id: uuid.UUID, index: int, token: str, task: ChunkTask) -> str:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return "gone"
        pinned = PinnedModel(version=job.model_version, ref=job.model_ref)
        runnable = job.status in lifecycle.ACTIVE or job.status == JobStatus.cancelling
        options = JobOptions.from_stored(job.options)
    predict: Predict | None = None
    if runnable:
        try:
            predict = task.load_predictor(pinned)
        except ModelUnavailable as exc:
            with session_scope() as session:
                lifecycle.fail_job(session=session, job_id=job_id, error=str(exc))
                finished = _callback_due(session.get(Job, job_id))
            _send_callback(finished)
            return "failed"
    settings = task.settings
    now = task.clock()
    with session_scope() as session:
        claim = claim_chunk(
            session=session,
            job_id=job_id,
            index=index,
            token=token,
            stale_before=now - timedelta(seconds=settings.job_stall_timeout_s),
            max_attempts=settings.job_chunk_max_attempts,
            now=now,
        )
    if claim == SKIP or predict is None:
        return "skipped"
    if claim == EXHAUSTED:
        fail_remaining(
            job_id=job_id,
            index=index,
            error=(
                f"not processed: its chunk was started {settings.job_chunk_max_attempts} times without "
                "finishing (the worker died or hit its time limit); the document may be too large"
            ),
            model_version=pinned.version,
            clock=task.clock,
        )
        return "failed"
    if task.heartbeat is not None:
        task.heartbeat.track(job_id, index, token)
    with session_scope() as session:
        documents = pending_documents(session=session, job_id=job_id, index=index)
    _run_in_slices(job_id, documents, predict, options, pinned.version, task)
    with session_scope() as session:
        finished = _callback_due(close_chunk(session=session, job_id=job_id, index=index, now=task.clock()))
    _send_callback(finished)
    return "processed"


def _send_callback(job_id: uuid.UUID | None) -> None:
    # After the commit that finished the job; the watchdog covers a message that is lost.
    if job_id is not None:
        send_callback(job_id)


def _run_in_slices(
    job_id: uuid.UUID,
    documents: Sequence[tuple[int, str]],
    predict: Predict,
    options: JobOptions,
    model_version: int | None,
    task: ChunkTask,
) -> None:
    """Run and record the documents a slice at a time, so the job's counters move within the chunk.

    The documents go longest first (the engine pads per batch: a slice of similar lengths wastes as
    little as the whole chunk in one call); a slice is sized to take about the progress interval,
    between the engine's batch and NER_JOB_PROGRESS_DOCUMENTS.
    """
    settings = task.settings
    ordered = sorted(documents, key=lambda doc: len(doc[1]), reverse=True)
    most = settings.job_progress_documents
    least = min(most, settings.engine_batch_size)
    size = least
    key = redact_key(settings) if options.redact is not None else b""
    position = 0
    while position < len(ordered):
        part = ordered[position : position + size]
        started = time.monotonic()
        try:
            outcomes = run_documents(predict, [text for _, text in part])
        except SoftTimeLimitExceeded:
            error = (
                f"not processed: the time limit of its chunk ({settings.task_time_limit_s} s) was exceeded"
            )
            rest = ordered[position:]
            with session_scope() as session:
                record_slice(
                    session=session,
                    job_id=job_id,
                    seqs=[seq for seq, _ in rest],
                    outcomes=[Outcome(DocumentStatus.failed, error=error) for _ in rest],
                    model_version=model_version,
                    now=task.clock(),
                )
            return
        if not options.is_default:
            outcomes = [
                _shaped(text, outcome, options, key)
                for (_, text), outcome in zip(part, outcomes, strict=True)
            ]
        with session_scope() as session:
            record_slice(
                session=session,
                job_id=job_id,
                seqs=[seq for seq, _ in part],
                outcomes=outcomes,
                model_version=model_version,
                now=task.clock(),
            )
        position += len(part)
        elapsed = time.monotonic() - started
        target = size * settings.job_progress_interval_s / elapsed if elapsed > 0 else most
        size = max(least, min(most, int(target)))


def _shaped(text: str, outcome: Outcome, options: JobOptions, key: bytes) -> Outcome:
    """The outcome with the job's options applied (failed documents stay as they are)."""
    if outcome.status != DocumentStatus.done:
        return outcome
    try:
        entities, redacted = shape(text, outcome.entities, options, key=key)
    except Exception as exc:  # a bug here fails the document, never the chunk
        log.exception("applying the job's options failed")
        return Outcome(DocumentStatus.failed, error=f"applying the job's options failed: {_describe(exc)}")
    return Outcome(DocumentStatus.done, entities, redacted_text=redacted)


def fail_remaining(
    *,
    job_id: uuid.UUID,
    index: int,
    error: str,
    model_version: int | None,
    clock: Callable[[], datetime] = lifecycle.utcnow,
) -> None:
    """Record every unprocessed document of a chunk as failed with ``error``; closes the chunk."""
    with session_scope() as session:
        documents = pending_documents(session=session, job_id=job_id, index=index)
        finished = _callback_due(
            record_results(
                session=session,
                job_id=job_id,
                index=index,
                seqs=[seq for seq, _ in documents],
                outcomes=[Outcome(DocumentStatus.failed, error=error) for _ in documents],
                model_version=model_version,
                now=clock(),
            )
        )
    _send_callback(finished)
