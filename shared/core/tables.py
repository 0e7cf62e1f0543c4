"""Database tables (SQLAlchemy 2.0 typed models). Alembic owns the schema: see ``migrations/``."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so migrations can refer to them on both PostgreSQL and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JsonType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as VARCHAR with a CHECK on both backends: adding a state is a plain migration.
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"


class DocumentStatus(enum.StrEnum):
    pending = "pending"
    done = "done"
    failed = "failed"
    skipped = "skipped"  # the job was cancelled before the document was processed


class ChunkStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    cancelled = "cancelled"


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class VersionStatus(enum.StrEnum):
    candidate = "candidate"
    active = "active"
    retired = "retired"


class ApiKeyScope(enum.StrEnum):
    predict = "predict"
    jobs = "jobs"
    train = "train"
    admin = "admin"
    metrics = "metrics"  # /metrics only: what Prometheus holds


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16), unique=True)  # shown to operators, not secret
    key_hash: Mapped[str] = mapped_column(String(128))
    scope: Mapped[ApiKeyScope] = mapped_column(_enum(ApiKeyScope))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Requests a minute on /predict* and job submission; None: NER_RATE_LIMIT_PER_MINUTE.
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)


class TrainingUpload(Base):
    """A training data file sent to POST /train/uploads: owned by its key, counted in its quota."""

    __tablename__ = "training_uploads"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    path: Mapped[str] = mapped_column(Text, unique=True)  # relative to the uploads folder
    filename: Mapped[str | None] = mapped_column(Text)  # as the caller named it (shown, never a path)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ArtifactChunk(Base):
    """One piece of an object of the ``postgresql`` artifact store (shared/artifacts/, migration 0007).

    An object (a version's file, an upload) is its rows of one ``key`` in ``seq`` order, each at most
    a few MB, so no single value nears PostgreSQL's 1 GB limit and reads stream.
    """

    __tablename__ = "artifact_chunks"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        # Exactly one active version: a partial unique index on both backends.
        Index(
            "uq_model_versions_one_active",
            "status",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[VersionStatus] = mapped_column(_enum(VersionStatus), default=VersionStatus.candidate)
    path: Mapped[str] = mapped_column(Text)  # the artifact folder (or fsspec URL)
    base_model: Mapped[str] = mapped_column(Text, default="")
    data_hash: Mapped[str] = mapped_column(String(64), default="")
    data_ref: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    labels: Mapped[list[str]] = mapped_column(JsonType, default=list)
    val_f1: Mapped[float | None] = mapped_column(Float)
    test_f1: Mapped[float | None] = mapped_column(Float)
    training_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The quality gate (shared/registry/gate.py, migration 0002): promoted | rejected | held, why,
    # this version's score on the operator's gate set ({"gate_hash", "f1", "per_type", ...}; on the
    # active version also the cache of its score) and the active version's score it was compared with.
    gate_decision: Mapped[str | None] = mapped_column(String(16))
    gate_reason: Mapped[str | None] = mapped_column(Text)
    gate_score: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    gate_active_score: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # Why a gateway or worker could not load this version (verification or load error, no paths),
    # and when; cleared by a good load or a new activation (migration 0005).
    load_error: Mapped[str | None] = mapped_column(Text)
    load_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        # A retried submission with the same Idempotency-Key returns the job it created first.
        UniqueConstraint("api_key_id", "idempotency_key", name="uq_jobs_idempotency"),
        # The watchdog's look for completion callbacks due (few rows are ever pending; 0005).
        Index(
            "ix_jobs_callback_due",
            "callback_next_at",
            postgresql_where=text("callback_state = 'pending'"),
            sqlite_where=text("callback_state = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.queued)
    # The version pinned at submission; NULL while serving NER_MODEL, whose reference is model_ref.
    model_version: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.version", ondelete="RESTRICT")
    )
    model_ref: Mapped[str] = mapped_column(Text, default="")
    name: Mapped[str | None] = mapped_column(Text)  # the caller's name for it (an upload's file name)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    total_chars: Mapped[int] = mapped_column(BigInteger, default=0)
    retention_days: Mapped[int] = mapped_column(Integer, default=30)  # expires_at = finish + this
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the submission (documents and retention): a retry with another body is refused.
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    request_id: Mapped[str | None] = mapped_column(String(100))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    # Set once every chunk task reached the broker; NULL after a crash or broker outage at submit,
    # so the workers' watchdog sends them later (the job row is the outbox).
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Options applied to the stored results (shared/jobs/options.py: offset_encoding, labels,
    # exclude_labels, min_score, redact), as validated at submission; NULL: none (migration 0005).
    options: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    # Completion callback (shared/jobs/callbacks.py): pending once the job ends, then delivered or
    # failed (gave up); next_at is when the next attempt is due (the watchdog's outbox).
    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_state: Mapped[str | None] = mapped_column(String(16))
    callback_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Progress within chunks: when the counters last moved and a moving rate (documents a second).
    progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rate: Mapped[float | None] = mapped_column(Float)


class JobCallbackAttempt(Base):
    """One attempt to deliver a job's completion callback: its HTTP status or why it failed."""

    __tablename__ = "job_callback_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class JobDocument(Base):
    """One input document; its result lives in ``job_results`` under the same (job, seq)."""

    __tablename__ = "job_documents"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)  # order within the job
    client_id: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)


class JobResult(Base):
    """Upserted by (job, seq), so a re-delivered chunk cannot create a second row."""

    __tablename__ = "job_results"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[DocumentStatus] = mapped_column(_enum(DocumentStatus))
    entities: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[int | None] = mapped_column(Integer)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    redacted_text: Mapped[str | None] = mapped_column(Text)  # the job's ``redact`` option (0005)


class JobChunk(Base):
    """A contiguous range of a job's documents, processed by one Celery task."""

    __tablename__ = "job_chunks"
    # The workers' watchdog looks for running chunks whose heartbeat (updated_at) stopped.
    __table_args__ = (Index("ix_job_chunks_status_updated", "status", "updated_at"),)

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq_start: Mapped[int] = mapped_column(Integer)
    seq_end: Mapped[int] = mapped_column(Integer)  # exclusive
    chars: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[ChunkStatus] = mapped_column(_enum(ChunkStatus), default=ChunkStatus.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64))  # the Celery task id running it
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus), default=RunStatus.queued)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)  # hyperparameters
    data: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)  # train/validation/test refs
    base_model: Mapped[str] = mapped_column(Text, default="")
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    test_metrics: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    checkpoint_dir: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[int | None] = mapped_column(Integer)
    promoted: Mapped[bool | None] = mapped_column(Boolean)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    request_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    epochs: Mapped[list[TrainingEpoch]] = relationship(
        back_populates="run", order_by="TrainingEpoch.epoch", cascade="all, delete-orphan"
    )


class TrainingEpoch(Base):
    __tablename__ = "training_epochs"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    precision: Mapped[float | None] = mapped_column(Float)
    recall: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[TrainingRun] = relationship(back_populates="epochs")


# --- shadow traffic and job re-runs (issue 15, migration 0006) -------------------------------------


class ShadowConfig(Base):
    """A version shadowing live /predict traffic: a row while on, deleted when stopped."""

    __tablename__ = "shadow_configs"

    version: Mapped[int] = mapped_column(
        ForeignKey("model_versions.version", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    sample_rate: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ShadowStat(Base):
    """Counters of a shadow version against one active version, UPSERTed by the comparing tasks.

    ``entity_type`` '' is the totals row (texts, texts_disagreeing, failed and all entities); the
    other rows count one entity type each (added, removed, matched).
    """

    __tablename__ = "shadow_stats"

    version: Mapped[int] = mapped_column(
        ForeignKey("model_versions.version", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    active_version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    entity_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    texts: Mapped[int] = mapped_column(BigInteger, default=0)
    texts_disagreeing: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    added: Mapped[int] = mapped_column(BigInteger, default=0)
    removed: Mapped[int] = mapped_column(BigInteger, default=0)
    matched: Mapped[int] = mapped_column(BigInteger, default=0)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ShadowSample(Base):
    """A live text on which shadow and active disagreed; bounded per version, purged at expires_at."""

    __tablename__ = "shadow_samples"
    __table_args__ = (Index("ix_shadow_samples_version_id", "version", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(ForeignKey("model_versions.version", ondelete="CASCADE"))
    active_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    text_chars: Mapped[int] = mapped_column(Integer)
    excerpt: Mapped[str | None] = mapped_column(Text)  # NULL when NER_SHADOW_STORE_TEXT=false
    excerpt_start: Mapped[int] = mapped_column(Integer, default=0)
    active_entities: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)
    shadow_entities: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)


class JobRerun(Base):
    """A job created by POST /jobs/{id}/rerun: which documents it copied, for GET /jobs/{a}/diff/{b}.

    ``source_job_id`` and ``root_job_id`` carry no foreign key: a re-run outlives its source's
    retention, and two re-runs of one root stay comparable.
    """

    __tablename__ = "job_reruns"

    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    source_job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    root_job_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
