"""Submitting, reading, listing and cancelling jobs."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import false, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.tables import Job, JobChunk, JobStatus, ModelVersion
from shared.jobs import lifecycle
from shared.jobs.callbacks import check_callback_url
from shared.jobs.cursors import decode_jobs_cursor, encode_cursor
from shared.jobs.errors import (
    InvalidSubmission,
    JobConflict,
    JobNotFound,
    NoModelForJobs,
    SubmissionTooLarge,
)
from shared.jobs.ingest import IncomingDocument
from shared.jobs.options import parse_options
from shared.jobs.store import ChunkPlanner, DocumentWriter
from shared.keys.owner import Owner
from shared.predict.options import entity_types
from shared.registry import service as registry

MAX_RETENTION_DAYS = 3650


@dataclass(frozen=True)
class PinnedModel:
    version: int | None  # None while serving NER_MODEL (then ``ref`` names it)
    ref: str


def resolve_model(*, session: Session, settings: Settings) -> PinnedModel:
    """The model a new job is pinned to: the active registry version, else NER_MODEL."""
    active = registry.get_active(session=session)
    if active is not None:
        return PinnedModel(version=active.version, ref=active.path)
    if settings.model:
        return PinnedModel(version=None, ref=settings.model)
    raise NoModelForJobs(
        "no model to run jobs with: the registry has no active version and NER_MODEL is not set; "
        "train one (ner train) or set NER_MODEL to a model folder or Hugging Face id"
    )


def _find_idempotent(session: Session, *, owner: Owner, key: str) -> Job | None:
    if session.get_bind().dialect.name == "postgresql":
        # Serialises retries of one submission; the unique constraint alone treats NULL key ids
        # (auth off) as distinct.
        session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"jobs:{owner.key_id}:{key}", 0)))
        )
    else:
        # SQLite: take the database's write lock before the read, so concurrent first tries queue
        # here (busy timeout) instead of both inserting, or failing to upgrade a read snapshot.
        session.execute(update(Job).where(false()).values(idempotency_key=Job.idempotency_key))
    return session.scalar(
        select(Job).where(Job.idempotency_key == key, Job.api_key_id.is_not_distinct_from(owner.key_id))
    )


def check_document(doc: IncomingDocument, *, max_chars: int) -> int:
    """The document's length in characters, after checking it can be stored and run."""
    length = len(doc.text)
    if length > max_chars:
        raise SubmissionTooLarge(
            f"{doc.where}: the document has {length} characters; the limit is {max_chars} "
            "(NER_DOCUMENT_MAX_CHARS)"
        )
    if "\x00" in doc.text or "\x00" in doc.client_id:
        raise InvalidSubmission(f"{doc.where}: contains a NUL character (U+0000), which cannot be stored")
    return length


# A job's name: what people call it in lists (an upload's file name by default), never an identifier.
JOB_NAME_MAX_CHARS = 200


def job_name(value: object) -> str | None:
    """A submitted job name, checked: text of at most 200 characters, control characters removed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidSubmission("name: must be a string")
    cleaned = "".join(ch for ch in value if ch.isprintable()).strip()
    if len(cleaned) > JOB_NAME_MAX_CHARS:
        raise InvalidSubmission(f"name: at most {JOB_NAME_MAX_CHARS} characters (got {len(cleaned)})")
    return cleaned or None


def create_job(
    *,
    session: Session,
    settings: Settings,
    documents: Iterable[IncomingDocument],
    owner: Owner,
    retention_days: int | None = None,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[Job, bool]:
    """Store a job, its documents and its chunks in one transaction; returns (job, created).

    Documents are consumed as a stream and written in batches. Any error rolls everything back,
    so a rejected submission leaves nothing behind. With an ``idempotency_key`` seen before (for
    this caller) the earlier job is returned and ``documents`` is not read. ``options``: the
    submission's raw option fields (shared/jobs/options.py, ``callback_url``), checked here.
    """
    if retention_days is not None and not 1 <= retention_days <= MAX_RETENTION_DAYS:
        raise InvalidSubmission(f"retention_days: must be between 1 and {MAX_RETENTION_DAYS}")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise InvalidSubmission("Idempotency-Key: must be 1 to 200 characters")
    options = dict(options or {})
    name = job_name(options.pop("name", None))
    callback_url = options.pop("callback_url", None)
    if callback_url is not None:
        check_callback_url(callback_url, settings=settings)
    fingerprint = hashlib.sha256(f"retention:{retention_days}\n".encode())
    if options or callback_url is not None:
        # Only then: a submission without options keeps the fingerprint it always had.
        fingerprint.update(json.dumps([options, callback_url], sort_keys=True, default=str).encode() + b"\n")
    documents = _fingerprinted(documents, fingerprint)
    try:
        if idempotency_key:
            existing = _find_idempotent(session, owner=owner, key=idempotency_key)
            if existing is not None:
                session.commit()
                return _replayed(existing, documents, fingerprint), False
        model = resolve_model(session=session, settings=settings)
        job_options = parse_options(options, settings=settings, known_types=_known_types(session, model))
        now = lifecycle.utcnow()
        retention = retention_days or settings.retention_days
        job = Job(
            id=uuid.uuid4(),
            status=JobStatus.queued,
            model_version=model.version,
            model_ref=model.ref,
            name=name,
            retention_days=retention,
            idempotency_key=idempotency_key,
            api_key_id=owner.key_id,
            request_id=request_id,
            created_at=now,
            expires_at=now + timedelta(days=retention),
            options=job_options.stored(),
            callback_url=callback_url,
        )
        session.add(job)
        session.flush()
        count, total_chars, planner = _write_documents(session, settings, job.id, documents)
        if count == 0:
            raise InvalidSubmission("the job has no documents")
        chunks = planner.finish()
        session.execute(
            insert(JobChunk),
            [
                {
                    "job_id": job.id,
                    "index": c.index,
                    "seq_start": c.seq_start,
                    "seq_end": c.seq_end,
                    "chars": c.chars,
                    "updated_at": now,
                }
                for c in chunks
            ],
        )
        job.total = count
        job.total_chars = total_chars
        job.idempotency_hash = fingerprint.hexdigest() if idempotency_key else None
        session.commit()
    except IntegrityError:
        session.rollback()
        # Two first tries of one Idempotency-Key at once (SQLite has no advisory lock): the unique
        # constraint let one in; the other is its replay.
        existing = _find_idempotent(session, owner=owner, key=idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        session.commit()
        return _replayed(existing, documents, fingerprint), False
    except BaseException:
        session.rollback()
        raise
    return job, True


def _known_types(session: Session, model: PinnedModel) -> list[str] | None:
    """The pinned version's entity types, when the registry recorded its labels (else unchecked)."""
    if model.version is None:
        return None
    labels = session.scalar(select(ModelVersion.labels).where(ModelVersion.version == model.version))
    return entity_types(labels) if labels else None


def _fingerprinted(
    documents: Iterable[IncomingDocument], digest: hashlib._Hash
) -> Iterator[IncomingDocument]:
    for doc in documents:
        digest.update(json.dumps([doc.client_id, doc.text]).encode() + b"\n")
        yield doc


def _replayed(existing: Job, documents: Iterator[IncomingDocument], digest: hashlib._Hash) -> Job:
    """The earlier job of a retried submission; another body under the same key is 422 (as Stripe)."""
    if existing.idempotency_hash is None:
        return existing  # stored before submissions were fingerprinted
    for _ in documents:  # the rest of the body, hashed as it is read
        pass
    if digest.hexdigest() != existing.idempotency_hash:
        raise InvalidSubmission(
            "Idempotency-Key: already used for a different submission; use a new key for new documents"
        )
    return existing


def _write_documents(
    session: Session, settings: Settings, job_id: uuid.UUID, documents: Iterable[IncomingDocument]
) -> tuple[int, int, ChunkPlanner]:
    planner = ChunkPlanner(max_chars=settings.chunk_max_chars, max_documents=settings.chunk_max_documents)
    count = total_chars = 0
    with DocumentWriter(session, job_id) as writer:
        for doc in documents:
            length = check_document(doc, max_chars=settings.document_max_chars)
            if count >= settings.job_max_documents:
                raise SubmissionTooLarge(
                    f"{doc.where}: more than {settings.job_max_documents} documents, the limit of one job "
                    "(NER_JOB_MAX_DOCUMENTS)"
                )
            total_chars += length
            if total_chars > settings.job_max_total_chars:
                raise SubmissionTooLarge(
                    f"{doc.where}: the job exceeds {settings.job_max_total_chars} characters in total, "
                    "the limit of one job (NER_JOB_MAX_TOTAL_CHARS)"
                )
            writer.write(count, doc.client_id, doc.text)
            planner.add(count, length)
            count += 1
    return count, total_chars, planner


def parse_job_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(f"no job {job_id!r}") from None


def get_job(*, session: Session, job_id: str | uuid.UUID, owner: Owner) -> Job:
    """One job the caller may see; JobNotFound otherwise (also for other keys' jobs)."""
    key = job_id if isinstance(job_id, uuid.UUID) else parse_job_id(job_id)
    job = session.get(Job, key, populate_existing=True)
    if job is None or not (owner.admin or job.api_key_id == owner.key_id):
        raise JobNotFound(f"no job {str(job_id)!r}")
    return job


def list_jobs(
    *,
    session: Session,
    owner: Owner,
    status: JobStatus | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Job], str | None]:
    """Jobs newest first (keyset pagination on created_at, id); returns the page and the next cursor."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if not owner.admin:
        query = query.where(Job.api_key_id.is_not_distinct_from(owner.key_id))
    if status is not None:
        query = query.where(Job.status == status)
    if cursor:
        query = query.where(tuple_(Job.created_at, Job.id) < decode_jobs_cursor(cursor))
    jobs = list(session.scalars(query))
    next_cursor = None
    if len(jobs) > limit:
        jobs = jobs[:limit]
        last = jobs[-1]
        next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
    return jobs, next_cursor


def cancel_job(*, session: Session, job_id: str, owner: Owner) -> Job:
    """Cancel a queued or running job (cancelling again is a no-op); 409 once it finished."""
    job = get_job(session=session, job_id=job_id, owner=owner)
    try:
        locked = lifecycle.lock_job(session, job.id)
        if locked is None:
            raise JobNotFound(f"no job {job_id!r}")
        if locked.status in lifecycle.FINISHED:
            raise JobConflict(
                f"job {job_id} already {locked.status.value}; only a queued or running job can be cancelled"
            )
        lifecycle.cancel_job(session=session, job_id=job.id)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return locked


def cancel_key_jobs(*, session: Session, api_key_id: int) -> int:
    """Cancel every queued or running job of a revoked key (processed results stay); returns how many.

    A running chunk finishes (the job is ``cancelling`` until then); queued chunks are dropped.
    """
    job_ids = session.scalars(
        select(Job.id).where(Job.api_key_id == api_key_id, Job.status.in_(lifecycle.ACTIVE))
    ).all()
    for job_id in job_ids:
        lifecycle.cancel_job(session=session, job_id=job_id)
    session.commit()
    return len(job_ids)
