"""HTTP shapes of the jobs API (requests, job status, result pages, entity counts)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.core.tables import Job, JobStatus
from shared.jobs.options import RedactOption
from shared.predict.options import OffsetEncoding, OutputOptions
from shared.predict.schemas import Entity


class DocumentIn(BaseModel):
    id: str | int | None = Field(default=None, description="Your id for the document; default: its index")
    text: str = Field(description="The document, up to NER_DOCUMENT_MAX_CHARS characters, stored as given")


class JobSubmission(BaseModel):
    """A JSON submission. For large inputs upload a JSONL/CSV/text file instead (parsed as a stream)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "documents": [
                        {
                            "id": "a1",
                            "text": "Google was founded by Larry Page and Sergey Brin in California.",
                        },
                        {"id": "a2", "text": "Kofi Annan visited Paris."},
                    ],
                    "retention_days": 7,
                }
            ]
        }
    )

    documents: list[DocumentIn]
    retention_days: int | None = Field(
        default=None, ge=1, le=3650, description="Days the results are kept after the job finishes"
    )
    offset_encoding: OffsetEncoding | None = OutputOptions.model_fields["offset_encoding"]
    labels: list[str] | None = OutputOptions.model_fields["labels"]
    exclude_labels: list[str] | None = OutputOptions.model_fields["exclude_labels"]
    min_score: float | dict[str, float] | None = OutputOptions.model_fields["min_score"]
    redact: RedactOption | None = Field(
        default=None,
        description="Store each document's text with its entities replaced (returned as redacted_text)",
    )
    callback_url: str | None = Field(
        default=None,
        description="POSTed {job_id, status, counts, results_url} when the job ends, signed "
        "(X-NER-Signature); its host must be on the operator's NER_CALLBACK_HOSTS",
    )

    @classmethod
    def openapi_schema(cls) -> dict[str, Any]:
        """The schema inlined (no $defs), for a route that reads its body itself."""
        schema = cls.model_json_schema()
        schema["properties"]["documents"]["items"] = DocumentIn.model_json_schema()
        schema["properties"]["redact"] = {
            **RedactOption.model_json_schema(),
            "description": schema["properties"]["redact"].get("description", ""),
        }
        schema.pop("$defs", None)
        return schema


class JobAccepted(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    status_url: str


class CallbackAttempt(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status")
    error: str | None = Field(description="Why no status came back (refused, timeout, connection)")


class CallbackView(BaseModel):
    url: str
    state: str = Field(description="waiting (job running), pending, delivered, or failed (given up)")
    delivered: bool
    attempts: list[CallbackAttempt]


class JobView(BaseModel):
    """A job's state and progress."""

    job_id: uuid.UUID
    name: str | None = Field(default=None, description="The job's name (given, or the uploaded file's name)")
    status: JobStatus
    total: int = Field(description="Documents in the job")
    done: int = Field(description="Documents processed successfully")
    failed: int = Field(description="Documents that could not be processed (see their result's error)")
    percent: float = Field(description="Processed (done + failed) over total, 0-100")
    throughput: float | None = Field(description="Documents processed per second since the job started")
    rate: float | None = Field(
        default=None, description="Documents per second lately (a moving average over about 30 s)"
    )
    eta_seconds: float | None = Field(description="Estimated seconds until the job finishes, at `rate`")
    eta: datetime | None = Field(description="Estimated time the job finishes")
    total_chars: int
    model_version: int | None = Field(description="The registry version pinned at submission")
    retention_days: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None = Field(description="When the job and its results are deleted")
    status_url: str
    results_url: str
    options: dict[str, Any] | None = Field(default=None, description="The job's options as validated")
    callback: CallbackView | None = Field(default=None, description="The completion callback, if any")


class JobPage(BaseModel):
    items: list[JobView]
    next_cursor: str | None


class ResultItem(BaseModel):
    id: str = Field(description="The document's id as submitted")
    seq: int = Field(description="The document's position in the job, from 0")
    status: str = Field(description="done or failed")
    entities: list[Entity]
    error: str | None
    model_version: int | None
    processed_at: datetime
    text: str | None = Field(default=None, description="The document's text (with include_text=true)")
    redacted_text: str | None = Field(default=None, description="The text redacted (the job's redact option)")


class ResultPage(BaseModel):
    items: list[ResultItem]
    next_cursor: str | None


class EntityCount(BaseModel):
    text: str
    type: str
    count: int = Field(description="Mentions in the job's results")
    documents: int = Field(description="Documents mentioning it")


class EntityCounts(BaseModel):
    items: list[EntityCount]


def _utc(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def job_view(job: Job, *, now: datetime | None = None, callback: dict[str, Any] | None = None) -> JobView:
    """The job's state with percent, throughput and ETA derived from its counts and timestamps.

    The ETA uses the job's moving rate (updated as chunks write their slices), else the average.
    """
    now = now or datetime.now(UTC)
    started, finished = _utc(job.started_at), _utc(job.finished_at)
    processed = job.done + job.failed
    percent = round(100.0 * processed / job.total, 2) if job.total else 0.0
    throughput = eta_seconds = eta = None
    if started is not None and processed:
        elapsed = ((finished or now) - started).total_seconds()
        if elapsed > 0:
            throughput = round(processed / elapsed, 3)
    rate = round(job.rate, 3) if job.rate else None
    speed = rate or throughput
    if finished is None and job.status in (JobStatus.queued, JobStatus.running) and speed:
        eta_seconds = round((job.total - processed) / speed, 1)
        eta = now + timedelta(seconds=eta_seconds)
    elif finished is not None:
        eta_seconds = 0.0
    status_url = f"/jobs/{job.id}"
    return JobView(
        job_id=job.id,
        name=job.name,
        status=job.status,
        total=job.total,
        done=job.done,
        failed=job.failed,
        percent=percent,
        throughput=throughput,
        rate=rate if finished is None else None,
        eta_seconds=eta_seconds,
        eta=eta,
        total_chars=job.total_chars,
        model_version=job.model_version,
        retention_days=job.retention_days,
        error=job.error,
        created_at=_utc(job.created_at),
        started_at=started,
        finished_at=finished,
        expires_at=_utc(job.expires_at),
        status_url=status_url,
        results_url=f"{status_url}/results",
        options=job.options,
        callback=CallbackView.model_validate(callback) if callback else None,
    )
