"""Re-running a job with another model version over its stored documents (no re-upload; issue 15)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import insert, literal, select
from sqlalchemy.orm import Session

from shared.core.tables import ChunkStatus, Job, JobChunk, JobDocument, JobRerun, JobStatus
from shared.jobs import lifecycle, service
from shared.keys.owner import Owner
from shared.registry import service as registry
from shared.registry.errors import VersionNotFound


def root_of(*, session: Session, job_id: uuid.UUID) -> uuid.UUID:
    """The job whose documents ``job_id`` holds: its own id, or the first job of its re-run chain."""
    root = session.scalar(select(JobRerun.root_job_id).where(JobRerun.job_id == job_id))
    return root or job_id


def rerun_job(
    *,
    session: Session,
    job_id: str,
    model_version: int,
    owner: Owner,
    request_id: str | None = None,
) -> tuple[Job, Job]:
    """A new queued job over ``job_id``'s stored documents, pinned to ``model_version``; (new, source).

    The documents and the chunk plan are copied inside the database (INSERT ... SELECT), in one
    transaction with the job row: nothing is uploaded again and nothing half-made is left behind.
    The new job belongs to the caller; dispatch it after this returns (``dispatch.dispatch_job``).
    """
    source = service.get_job(session=session, job_id=job_id, owner=owner)  # 404 for other keys' jobs
    version = registry.get_version(session=session, version=model_version)
    if version is None:
        raise VersionNotFound(f"model_version: version {model_version} does not exist")
    now = lifecycle.utcnow()
    new_id = uuid.uuid4()
    try:
        job = Job(
            id=new_id,
            status=JobStatus.queued,
            model_version=version.version,
            model_ref=version.path,
            retention_days=source.retention_days,
            api_key_id=owner.key_id,
            request_id=request_id,
            created_at=now,
            expires_at=now + timedelta(days=source.retention_days),
            total=source.total,
            total_chars=source.total_chars,
        )
        # Result options (labels, offsets, redaction: migration 0005) shape the stored entities;
        # the re-run keeps them, so its diff compares like with like.
        if hasattr(Job, "options"):
            job.options = source.options
        session.add(job)
        session.flush()
        session.execute(
            insert(JobDocument).from_select(
                ["job_id", "seq", "client_id", "text"],
                select(
                    literal(new_id, JobDocument.job_id.type),
                    JobDocument.seq,
                    JobDocument.client_id,
                    JobDocument.text,
                ).where(JobDocument.job_id == source.id),
            )
        )  # fmt: skip
        session.execute(
            insert(JobChunk).from_select(
                ["job_id", "index", "seq_start", "seq_end", "chars", "status", "attempts", "updated_at"],
                select(
                    literal(new_id, JobChunk.job_id.type),
                    JobChunk.index,
                    JobChunk.seq_start,
                    JobChunk.seq_end,
                    JobChunk.chars,
                    literal(ChunkStatus.queued.value),
                    literal(0),
                    literal(now, JobChunk.updated_at.type),
                ).where(JobChunk.job_id == source.id),
            )
        )
        session.add(
            JobRerun(
                job_id=new_id,
                source_job_id=source.id,
                root_job_id=root_of(session=session, job_id=source.id),
                created_at=now,
            )
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return job, source
