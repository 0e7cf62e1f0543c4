"""A job's state transitions, each made under the job row's lock so concurrent tasks agree."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.core.tables import ChunkStatus, Job, JobChunk, JobStatus

FINISHED = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})
ACTIVE = frozenset({JobStatus.queued, JobStatus.running})


# A job's completion callback is due from the transaction that finishes it (shared/jobs/callbacks.py).
CALLBACK_PENDING = "pending"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite returns them naive)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def lock_job(session: Session, job_id: uuid.UUID) -> Job | None:
    """The job row, locked until the transaction ends (PostgreSQL; SQLite serialises writers)."""
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def _finish(job: Job, status: JobStatus, now: datetime, error: str | None = None) -> None:
    job.status = status
    job.finished_at = now
    job.expires_at = now + timedelta(days=job.retention_days)
    if error is not None:
        job.error = error
    if job.callback_url and job.callback_state is None:
        job.callback_state = CALLBACK_PENDING
        job.callback_next_at = now


def running_chunks(session: Session, job_id: uuid.UUID) -> int:
    return session.scalar(
        select(func.count())
        .select_from(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.status == ChunkStatus.running)
    )


def finalize_job(*, session: Session, job_id: uuid.UUID, now: datetime | None = None) -> Job | None:
    """Finish the job if nothing is left to do; calling it again changes nothing."""
    now = now or utcnow()
    job = lock_job(session, job_id)
    if job is None or job.status in FINISHED:
        return job
    if job.status == JobStatus.cancelling:
        if running_chunks(session, job_id) == 0:
            _finish(job, JobStatus.cancelled, now)
    elif job.done + job.failed >= job.total:
        if job.done == 0 and job.total > 0:
            _finish(job, JobStatus.failed, now, error=job.error or "every document failed")
        else:
            _finish(job, JobStatus.succeeded, now)
    return job


def fail_job(*, session: Session, job_id: uuid.UUID, error: str, now: datetime | None = None) -> None:
    """Fail a job for a reason that no retry fixes (its pinned model cannot be loaded)."""
    now = now or utcnow()
    job = lock_job(session, job_id)
    if job is None or job.status in FINISHED:
        return
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.status.in_([ChunkStatus.queued, ChunkStatus.running]))
        .values(status=ChunkStatus.cancelled, updated_at=now)
    )
    _finish(job, JobStatus.failed, now, error=error)


def cancel_job(*, session: Session, job_id: uuid.UUID, now: datetime | None = None) -> Job | None:
    """Drop the queued chunks; a running chunk finishes first (the job is ``cancelling`` until then)."""
    now = now or utcnow()
    job = lock_job(session, job_id)
    if job is None or job.status in FINISHED or job.status == JobStatus.cancelling:
        return job
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.status == ChunkStatus.queued)
        .values(status=ChunkStatus.cancelled, updated_at=now)
    )
    if running_chunks(session, job_id):
        job.status = JobStatus.cancelling
    else:
        _finish(job, JobStatus.cancelled, now)
    return job
