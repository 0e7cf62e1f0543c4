"""Keeping jobs moving and the database small: the workers' watchdog and the retention purge."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.redis import redis_client
from shared.core.tables import ChunkStatus, Job, JobCallbackAttempt, JobChunk, JobDocument, JobResult
from shared.jobs import callbacks, lifecycle
from shared.jobs.dispatch import BROKER_ERRORS, resend_chunks, send_callback, send_chunks

log = logging.getLogger(__name__)

WATCHDOG_BATCH = 100
PURGE_JOBS_PER_RUN = 100


class Sender(Protocol):
    """How chunks are sent (``send_chunks``; tests capture the calls instead)."""

    def __call__(
        self, job_id: uuid.UUID, indexes: Iterable[int], *, request_id: str | None = None
    ) -> int: ...


# A key the watchdog keeps in the broker's Redis. Its absence means the broker lost its data since
# the last pass (a restart without persistence, a flush), and with it the queued chunks' messages.
BROKER_MARKER = "ner:watchdog:broker-marker"


@dataclass
class WatchdogReport:
    dispatched_jobs: int = 0
    requeued_chunks: int = 0
    resent_after_broker_loss: int = 0
    resent_callbacks: int = 0


def _skip_locked(session: Session) -> dict[str, bool]:
    return {"skip_locked": True} if session.get_bind().dialect.name == "postgresql" else {}


def dispatch_stragglers(*, session: Session, older_than: datetime, send: Sender = send_chunks) -> int:
    """Send the chunks of committed jobs whose tasks never reached the broker (outbox)."""
    job_ids = session.scalars(
        select(Job.id)
        .where(Job.dispatched_at.is_(None), Job.status.in_(lifecycle.ACTIVE), Job.created_at < older_than)
        .order_by(Job.created_at)
        .limit(WATCHDOG_BATCH)
    ).all()
    session.rollback()
    dispatched = 0
    for job_id in job_ids:
        # The row lock keeps two watchdogs from sending the same job twice.
        job = session.scalar(
            select(Job)
            .where(Job.id == job_id, Job.dispatched_at.is_(None))
            .with_for_update(**_skip_locked(session))
        )
        if job is None:
            session.rollback()
            continue
        indexes = session.scalars(
            select(JobChunk.index)
            .where(JobChunk.job_id == job_id, JobChunk.status == ChunkStatus.queued)
            .order_by(JobChunk.index)
        ).all()
        try:
            send(job_id, indexes, request_id=job.request_id)
        except BROKER_ERRORS as exc:
            session.rollback()
            log.warning("watchdog: broker unavailable (%s); job %s stays undispatched", exc, job_id)
            return dispatched
        job.dispatched_at = lifecycle.utcnow()
        session.commit()
        dispatched += 1
        log.info(
            "watchdog: sent %d chunk(s) of job %s, which had not reached the broker", len(indexes), job_id
        )
    return dispatched


def requeue_stalled_chunks(
    *,
    session: Session,
    stale_before: datetime,
    exclude: frozenset[tuple[uuid.UUID, int]] = frozenset(),
    send: Sender = resend_chunks,
) -> int:
    """Send again the running chunks whose heartbeat stopped (their worker died)."""
    candidates = session.execute(
        select(JobChunk.job_id, JobChunk.index)
        .where(JobChunk.status == ChunkStatus.running, JobChunk.updated_at < stale_before)
        .limit(WATCHDOG_BATCH)
    ).all()
    session.rollback()
    requeued = 0
    for job_id, index in candidates:
        if (job_id, index) in exclude:
            continue
        job = lifecycle.lock_job(session, job_id)
        chunk = session.scalar(
            select(JobChunk)
            .where(
                JobChunk.job_id == job_id,
                JobChunk.index == index,
                JobChunk.status == ChunkStatus.running,
                JobChunk.updated_at < stale_before,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if job is None or chunk is None:
            session.rollback()
            continue
        now = lifecycle.utcnow()
        if job.status not in lifecycle.ACTIVE:
            # A cancelled job's dead chunk is not run again; the job can now finish cancelling.
            chunk.status = ChunkStatus.cancelled
            chunk.updated_at = now
            lifecycle.finalize_job(session=session, job_id=job_id, now=now)
            session.commit()
            continue
        chunk.status = ChunkStatus.queued
        chunk.claimed_by = None
        chunk.updated_at = now
        try:
            # Sent before the commit: if the broker is down the chunk stays stalled and is tried again.
            send(job_id, [index], request_id=job.request_id)
        except BROKER_ERRORS as exc:
            session.rollback()
            log.warning("watchdog: broker unavailable (%s); chunk %s/%d waits", exc, job_id, index)
            return requeued
        session.commit()
        requeued += 1
        log.warning("watchdog: chunk %d of job %s stalled (worker lost); sent it again", index, job_id)
    return requeued


def release_lost_chunk(
    *, session: Session, job_id: uuid.UUID, index: int, token: str, send: Sender = resend_chunks
) -> bool:
    """Send again, at once, a chunk whose process died running it (its worker saw it die).

    Only while the claim is still ``token``'s: a chunk already taken over or finished is left
    alone. The attempt stays counted (``claim_chunk`` counted it), so a document that kills the
    process ends failed after ``job_chunk_max_attempts``, never in a loop.
    """
    job = lifecycle.lock_job(session, job_id)
    chunk = session.scalar(
        select(JobChunk)
        .where(
            JobChunk.job_id == job_id,
            JobChunk.index == index,
            JobChunk.status == ChunkStatus.running,
            JobChunk.claimed_by == token,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if job is None or chunk is None:
        session.rollback()
        return False
    now = lifecycle.utcnow()
    if job.status not in lifecycle.ACTIVE:
        chunk.status = ChunkStatus.cancelled  # a cancelled job's lost chunk is not run again
        chunk.updated_at = now
        lifecycle.finalize_job(session=session, job_id=job_id, now=now)
        session.commit()
        return False
    chunk.status = ChunkStatus.queued
    chunk.claimed_by = None
    chunk.updated_at = now
    # Sent before the commit: if the broker is down the claim stays and the watchdog re-sends it
    # once its heartbeat is stale.
    send(job_id, [index], request_id=job.request_id)
    session.commit()
    log.warning("chunk %d of job %s: its process died (worker lost); sent it again", index, job_id)
    return True


def broker_lost_its_data(redis_url: str) -> bool:
    """True when the marker key is gone: queued messages may be lost (also true on the first pass)."""
    return bool(redis_client(redis_url).set(BROKER_MARKER, lifecycle.utcnow().isoformat(), nx=True))


def _broker_lost(settings: Settings) -> bool:
    """The marker check on the broker itself: a key in the broker's Redis (NER_BROKER_URL, else
    NER_REDIS_URL), or on RabbitMQ a durable queue (a Redis key says nothing about RabbitMQ's data)."""
    if settings.broker_is_amqp:
        from shared.core.celery_app import amqp_lost_its_data, celery_app

        return amqp_lost_its_data(celery_app)
    return broker_lost_its_data(settings.celery_broker_url)


def resend_unclaimed_chunks(*, settings: Settings, send: Sender = resend_chunks) -> int:
    """Redis only: send again the queued chunks whose message a worker took but never claimed nor
    acknowledged for a stall timeout (its main process died): Redis would return it only after the
    visibility timeout. RabbitMQ re-delivers such a message at once, when the connection closes."""
    if settings.broker_is_amqp:
        return 0
    from shared.core.celery_app import forget_unacked_redis, stale_unacked_redis
    from shared.jobs.dispatch import PROCESS_CHUNK

    resent = 0
    stale = stale_unacked_redis(settings, task=PROCESS_CHUNK, older_than_s=settings.job_stall_timeout_s)
    for tag, args in stale:
        try:
            job_id, index = uuid.UUID(str(args[0])), int(args[1])
        except (ValueError, IndexError, TypeError):
            continue
        with session_scope() as session:
            row = session.execute(
                select(JobChunk.status, Job.status, Job.request_id)
                .join(Job, Job.id == JobChunk.job_id)
                .where(JobChunk.job_id == job_id, JobChunk.index == index)
            ).first()
        if row is None or row[0] != ChunkStatus.queued or row[1] not in lifecycle.ACTIVE:
            continue  # claimed (the heartbeat covers it), done, or its job is over
        send(job_id, [index], request_id=row[2])  # first: a lost send leaves the message for the next pass
        forget_unacked_redis(settings, tag)
        resent += 1
        log.warning("watchdog: chunk %d of job %s: its worker died unclaimed; sent it again", index, job_id)
    return resent


def _forget_broker_marker(settings: Settings) -> None:
    if settings.broker_is_amqp:
        from shared.core.celery_app import celery_app, forget_amqp_marker

        forget_amqp_marker(celery_app)
    else:
        redis_client(settings.celery_broker_url).delete(BROKER_MARKER)


def resend_queued_chunks(*, session: Session, send: Sender = send_chunks) -> int:
    """Send again every queued chunk of the dispatched, active jobs (after the broker lost its data).

    A chunk whose message did survive then has two; the second finds it done or running and is
    skipped, so this costs a few empty tasks and never a duplicate result.
    """
    rows = session.execute(
        select(JobChunk.job_id, Job.request_id, JobChunk.index)
        .join(Job, Job.id == JobChunk.job_id)
        .where(
            JobChunk.status == ChunkStatus.queued,
            Job.dispatched_at.is_not(None),
            Job.status.in_(lifecycle.ACTIVE),
        )
        .order_by(Job.created_at, JobChunk.index)
    ).all()
    session.rollback()
    by_job: dict[tuple[uuid.UUID, str | None], list[int]] = {}
    for job_id, request_id, index in rows:
        by_job.setdefault((job_id, request_id), []).append(index)
    for (job_id, request_id), indexes in by_job.items():
        send(job_id, indexes, request_id=request_id)
    if rows:
        log.warning("watchdog: the broker lost its data; sent %d queued chunk(s) again", len(rows))
    return len(rows)


def run_watchdog(
    *,
    settings: Settings,
    exclude: frozenset[tuple[uuid.UUID, int]] = frozenset(),
    send: Sender = send_chunks,
    resend: Sender | None = None,
) -> WatchdogReport:
    """One pass: re-send chunks a broker lost, dispatch undispatched jobs, re-send stalled chunks.

    ``resend`` sends the chunks of dead workers (the recovery queue); a ``send`` of the caller's
    own (a test capturing the calls) sends those too unless ``resend`` is given.
    """
    if resend is None:
        resend = resend_chunks if send is send_chunks else send
    now = lifecycle.utcnow()
    older_than = now - timedelta(seconds=settings.job_stall_timeout_s)
    report = WatchdogReport()
    try:
        if _broker_lost(settings):
            try:
                with session_scope() as session:
                    report.resent_after_broker_loss = resend_queued_chunks(session=session, send=send)
            except BROKER_ERRORS:
                # Not every chunk was sent: unset the marker, so the next pass sends them again.
                _forget_broker_marker(settings)
                raise
    except BROKER_ERRORS as exc:
        log.warning("watchdog: broker unavailable (%s); queued chunks are checked next pass", exc)
    with session_scope() as session:
        report.dispatched_jobs = dispatch_stragglers(session=session, older_than=older_than, send=send)
    with session_scope() as session:
        report.requeued_chunks = requeue_stalled_chunks(
            session=session, stale_before=older_than, exclude=exclude, send=resend
        )
    try:
        report.requeued_chunks += resend_unclaimed_chunks(settings=settings, send=resend)
    except BROKER_ERRORS as exc:
        log.warning("watchdog: broker unavailable (%s); unclaimed chunks are checked next pass", exc)
    report.resent_callbacks = resend_due_callbacks(
        now=now, grace_s=settings.job_stall_timeout_s, send=send_callback
    )
    return report


def resend_due_callbacks(*, now: datetime, grace_s: float, send: Callable[[uuid.UUID], bool]) -> int:
    """Send again the callback tasks of jobs whose callback is overdue (its message was lost)."""
    with session_scope() as session:
        job_ids = callbacks.claim_due(session=session, now=now, grace_s=grace_s)
    for job_id in job_ids:
        send(job_id)
    if job_ids:
        log.warning("watchdog: sent %d overdue job callback(s) again", len(job_ids))
    return len(job_ids)


def _delete_rows_in_batches(
    table: type[JobResult] | type[JobDocument], job_id: uuid.UUID, total: int, step: int
) -> None:
    for start in range(0, max(total, 1), step):
        with session_scope() as session:
            session.execute(
                delete(table).where(table.job_id == job_id, table.seq >= start, table.seq < start + step)
            )


def purge_expired(
    *, settings: Settings, now: datetime | None = None, max_jobs: int = PURGE_JOBS_PER_RUN
) -> int:
    """Delete finished jobs past their ``expires_at``, each in batches of rows; returns how many."""
    now = now or lifecycle.utcnow()
    with session_scope() as session:
        expired = session.execute(
            select(Job.id, Job.total)
            .where(Job.expires_at < now, Job.status.in_(lifecycle.FINISHED))
            .order_by(Job.expires_at)
            .limit(max_jobs)
        ).all()
    for job_id, total in expired:
        # Results and documents go in short transactions, so a million-document job never holds
        # long locks; the job row last, so an interrupted purge is simply resumed next time.
        _delete_rows_in_batches(JobResult, job_id, total, settings.purge_batch_rows)
        _delete_rows_in_batches(JobDocument, job_id, total, settings.purge_batch_rows)
        with session_scope() as session:
            # A handful of rows; explicit, as SQLite only cascades with its foreign keys switched on.
            session.execute(delete(JobCallbackAttempt).where(JobCallbackAttempt.job_id == job_id))
            session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(lifecycle.FINISHED)))
    if expired:
        log.info("purged %d expired job(s)", len(expired))
    return len(expired)
