"""Bulk jobs: submit documents (JSON or an uploaded file), poll, page through results, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from gateway.deps import Principal, SessionDep, SettingsDep, require_scope
from gateway.streaming import NDJSON, ndjson_response
from shared.core.config import Settings
from shared.core.logging import get_request_id
from shared.core.tables import JobStatus
from shared.jobs import callbacks, lifecycle, results, service
from shared.jobs.dispatch import dispatch_job, send_callback
from shared.jobs.errors import InvalidSubmission, SubmissionTooLarge, UnsupportedMediaType
from shared.jobs.ingest import detect_format, parse_json_job, parse_retention, parse_upload
from shared.jobs.options import form_values
from shared.jobs.schemas import (
    EntityCounts,
    JobAccepted,
    JobPage,
    JobSubmission,
    JobView,
    ResultPage,
    job_view,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobsPrincipal = Annotated[Principal, Depends(require_scope("jobs"))]
JSON_ON_LOOP_MAX_BYTES = 64 * 1024  # parsing more than this would hold up every other request

_NOT_FOUND = {404: {"description": "No such job (or not one of this API key's)"}}
_UPLOAD_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": JobSubmission.openapi_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": 'JSONL ({"id","text"} a line), CSV/TSV (id and text columns) '
                            "or plain text (one document a line), UTF-8",
                        },
                        "format": {"type": "string", "enum": ["jsonl", "csv", "tsv", "text"]},
                        "retention_days": {"type": "integer", "minimum": 1, "maximum": 3650},
                        "offset_encoding": {"type": "string", "enum": ["codepoint", "utf16", "utf8"]},
                        "labels": {"type": "string", "description": "PER,ORG or a JSON array"},
                        "exclude_labels": {"type": "string", "description": "PER,ORG or a JSON array"},
                        "min_score": {"type": "string", "description": '0.5 or a JSON object {"PER": 0.6}'},
                        "redact": {
                            "type": "string",
                            "description": 'mask, type, hash, or {"mode": "type", "types": ["PER"]}',
                        },
                        "callback_url": {"type": "string", "description": "Called when the job ends"},
                    },
                }
            },
        },
        "required": True,
    }
}


async def _read_json_body(request: Request, settings: Settings) -> bytes:
    """The body, read up to NER_JOB_JSON_MAX_BYTES (bigger inputs belong in an uploaded file)."""
    limit = settings.job_json_max_bytes
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise SubmissionTooLarge(
                f"the JSON body exceeds {limit} bytes (NER_JOB_JSON_MAX_BYTES); "
                "upload a JSONL, CSV or text file as multipart/form-data instead, which is parsed as a stream"
            )
    return bytes(body)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    summary="Submit a job: a JSON list of documents, or an uploaded JSONL / CSV / text file",
    openapi_extra=_UPLOAD_DOC,
    responses={
        413: {"description": "Over a limit (document size, document count, total characters)"},
        422: {"description": "Malformed input; the message names the line or column; nothing stored"},
        503: {"description": "No model to run the job with"},
    },
)
async def submit_job(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: JobsPrincipal,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", description="Retrying with the same key returns the same job"),
    ] = None,
) -> JobAccepted:
    content_type = request.headers.get("content-type", "").lower()
    create: dict[str, Any] = {
        "session": session,
        "settings": settings,
        "owner": principal.owner,
        "idempotency_key": idempotency_key,
        "request_id": get_request_id(),
    }
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=20) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidSubmission(
                    "file: missing; send the documents as a multipart file field named 'file'"
                )
            declared = form.get("format")
            fmt = detect_format(
                declared=declared if isinstance(declared, str) else None,
                filename=upload.filename,
                content_type=upload.content_type,
            )
            documents = parse_upload(upload.file, fmt=fmt, document_max_chars=settings.document_max_chars)
            # Named as the caller says, else after the file they sent.
            options = {"name": upload.filename, **form_values(form)}
            job, created = await run_in_threadpool(
                service.create_job,
                documents=documents,
                retention_days=parse_retention(form.get("retention_days")),
                options=options,
                **create,
            )
    elif content_type.startswith("application/json") or not content_type:
        raw = await _read_json_body(request, settings)
        # A large body is parsed in a worker thread: the event loop keeps answering meanwhile.
        if len(raw) > JSON_ON_LOOP_MAX_BYTES:
            parsed = await run_in_threadpool(parse_json_job, raw)
        else:
            parsed = parse_json_job(raw)
        job, created = await run_in_threadpool(
            service.create_job,
            documents=parsed.documents,
            retention_days=parsed.retention_days,
            options=parsed.options,
            **create,
        )
    else:
        raise UnsupportedMediaType("send application/json or a multipart/form-data file upload")
    if created:
        await run_in_threadpool(dispatch_job, session=session, job_id=job.id)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    status_url = f"/jobs/{job.id}"
    response.headers["Location"] = status_url
    return JobAccepted(job_id=job.id, status=job.status, status_url=status_url)


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    principal: JobsPrincipal,
    status_filter: Annotated[
        JobStatus | None, Query(alias="status", description="Only jobs in this state")
    ] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    jobs, next_cursor = service.list_jobs(
        session=session, owner=principal.owner, status=status_filter, cursor=cursor, limit=limit
    )
    return JobPage(items=[job_view(job) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobView, responses=_NOT_FOUND, summary="A job's status and progress")
def get_job(job_id: str, session: SessionDep, principal: JobsPrincipal) -> JobView:
    job = service.get_job(session=session, job_id=job_id, owner=principal.owner)
    return job_view(job, callback=callbacks.callback_view(session=session, job=job))


@router.get(
    "/{job_id}/results",
    response_model=ResultPage,
    response_model_exclude_unset=True,  # text and redacted_text only where they apply
    responses={**_NOT_FOUND, 200: {"content": {NDJSON: {}}}},
    summary="Processed documents in order (keyset pages), or all of them as NDJSON",
)
def get_results(
    job_id: str,
    session: SessionDep,
    principal: JobsPrincipal,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[Literal["json", "ndjson"], Query(description="ndjson: stream every result")] = "json",
    include_text: Annotated[bool, Query(description="Return each document's text with its result")] = False,
) -> Any:
    job = service.get_job(session=session, job_id=job_id, owner=principal.owner)
    if format == "ndjson":
        return ndjson_response(
            lambda session: results.iter_results(session=session, job_id=job.id, include_text=include_text)
        )
    items, next_cursor = results.list_results(
        session=session, job_id=job.id, cursor=cursor, limit=limit, include_text=include_text
    )
    return ResultPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.get(
    "/{job_id}/entities",
    response_model=EntityCounts,
    responses=_NOT_FOUND,
    summary="Distinct (entity text, type) of the job's results with their counts, most frequent first",
)
def get_entities(
    job_id: str,
    session: SessionDep,
    principal: JobsPrincipal,
    entity_type: Annotated[str | None, Query(alias="type", description="e.g. ORG")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> EntityCounts:
    job = service.get_job(session=session, job_id=job_id, owner=principal.owner)
    items = results.aggregate_entities(session=session, job_id=job.id, entity_type=entity_type, limit=limit)
    return EntityCounts.model_validate({"items": items})


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    responses={**_NOT_FOUND, 409: {"description": "The job already finished"}},
    summary="Cancel a job: queued chunks are dropped, a running one finishes, results stay readable",
)
def cancel_job(job_id: str, session: SessionDep, principal: JobsPrincipal) -> JobView:
    job = service.cancel_job(session=session, job_id=job_id, owner=principal.owner)
    if job.status in lifecycle.FINISHED and job.callback_state == lifecycle.CALLBACK_PENDING:
        send_callback(job.id)  # cancelled at once (nothing was running): the callback is due now
    return job_view(job, callback=callbacks.callback_view(session=session, job=job))
