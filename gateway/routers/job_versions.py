"""A job again with another model version, and what changed between the two runs (issue 15)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response, status

from gateway.deps import Principal, SessionDep, require_scope
from gateway.streaming import NDJSON, ndjson_response
from shared.core.logging import get_request_id
from shared.jobs import diff, rerun
from shared.jobs.dispatch import dispatch_job
from shared.shadow.schemas import DiffPage, RerunAccepted, RerunRequest

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobsPrincipal = Annotated[Principal, Depends(require_scope("jobs"))]
# A re-run is a submission: it costs a token of the key's rate limit like POST /jobs.
SubmitPrincipal = Annotated[Principal, Depends(require_scope("jobs", rate_limited=True))]


@router.post(
    "/{job_id}/rerun",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RerunAccepted,
    responses={404: {"description": "No such job (or not one of this API key's), or no such model version"}},
    summary="Run a job's stored documents again with another model version (no re-upload)",
)
def rerun_job(
    job_id: str, body: RerunRequest, response: Response, session: SessionDep, principal: SubmitPrincipal
) -> RerunAccepted:
    job, source = rerun.rerun_job(
        session=session,
        job_id=job_id,
        model_version=body.model_version,
        owner=principal.owner,
        request_id=get_request_id(),
    )
    dispatch_job(session=session, job_id=job.id)
    status_url = f"/jobs/{job.id}"
    response.headers["Location"] = status_url
    return RerunAccepted(
        job_id=job.id,
        status=job.status.value,
        status_url=status_url,
        source_job_id=source.id,
        model_version=body.model_version,
        total=job.total,
        diff_url=f"/jobs/{source.id}/diff/{job.id}",
    )


@router.get(
    "/{job_a}/diff/{job_b}",
    response_model=DiffPage,
    responses={
        404: {"description": "No such job (or not one of this API key's)"},
        409: {"description": "The two jobs do not hold the same documents"},
        200: {"content": {NDJSON: {}}},
    },
    summary="Documents whose entities differ between a job and its re-run (keyset pages, or NDJSON)",
)
def get_diff(
    job_a: str,
    job_b: str,
    session: SessionDep,
    principal: JobsPrincipal,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: Annotated[
        Literal["json", "ndjson"] | None, Query(description="ndjson: stream every differing document")
    ] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    a, b = diff.load_pair(session=session, job_a=job_a, job_b=job_b, owner=principal.owner)
    if format == "ndjson" or (format is None and NDJSON in (accept or "")):
        return ndjson_response(lambda session: diff.iter_diff(session=session, job_a=a.id, job_b=b.id))
    return DiffPage.model_validate(
        diff.diff_page(session=session, job_a=a, job_b=b, cursor=cursor, limit=limit)
    )
