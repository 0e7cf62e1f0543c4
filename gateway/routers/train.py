"""Training runs: start (data by reference or upload), watch epoch by epoch, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from gateway.deps import Principal, SessionDep, SettingsDep, require_scope
from shared.core.logging import get_request_id
from shared.training import service, uploads
from shared.training.schemas import (
    TrainAccepted,
    TrainRequest,
    TrainRunList,
    TrainRunOut,
    UploadOut,
    run_view,
)

router = APIRouter(prefix="/train", tags=["train"])

TrainPrincipal = Annotated[Principal, Depends(require_scope("train"))]
_NOT_FOUND = {404: {"description": "No such training run (or not one of this API key's)"}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainAccepted,
    summary="Start a training run (queued on the training workers)",
    responses={
        403: {"description": "A base_model this key may not choose (admin or NER_BASE_MODEL_ALLOW)"},
        422: {"description": "Bad parameters, or data outside NER_DATA_ROOTS / not found"},
        429: {"description": "This key has NER_TRAIN_MAX_QUEUED_RUNS runs queued or running"},
    },
)
def start_run(
    body: TrainRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainPrincipal,
) -> TrainAccepted:
    run = service.start_run(
        session=session,
        settings=settings,
        data=body.data if isinstance(body.data, str) else body.data.model_dump(exclude_none=True),
        overrides=body.model_dump(exclude_none=True, exclude={"data", "base_model"}),
        base_model=body.base_model,
        owner=principal.owner,
        request_id=get_request_id(),
    )
    status_url = str(request.url_for("get_run", run_id=run.id))
    return TrainAccepted(run_id=run.id, status=run.status.value, status_url=status_url)


@router.get("", response_model=TrainRunList, summary="Recent training runs, newest first")
def list_runs(
    session: SessionDep, principal: TrainPrincipal, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> TrainRunList:
    runs = service.list_runs(session=session, owner=principal.owner, limit=limit)
    return TrainRunList(runs=[run_view(run) for run in runs])


@router.post(
    "/uploads",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    summary="Upload a data file (CoNLL or JSONL); reference it in POST /train as upload:<id>/<name>",
    responses={
        413: {"description": "Larger than NER_TRAIN_UPLOAD_MAX_BYTES"},
        429: {"description": "Over this API key's upload quota (NER_TRAIN_UPLOAD_QUOTA_BYTES)"},
    },
)
async def upload_data(
    file: UploadFile, session: SessionDep, settings: SettingsDep, principal: TrainPrincipal
) -> UploadOut:
    stored = await run_in_threadpool(
        uploads.store_upload,
        session=session,
        settings=settings,
        owner=principal.owner,
        filename=file.filename,
        stream=file.file,
    )
    return UploadOut(
        path=str(stored.path),
        reference=stored.reference,
        bytes=stored.bytes,
        sha256=stored.sha256,
        filename=stored.filename,
    )


@router.get(
    "/{run_id}",
    response_model=TrainRunOut,
    summary="A run's status, progress, ETA and epochs",
    responses=_NOT_FOUND,
)
def get_run(run_id: uuid.UUID, session: SessionDep, principal: TrainPrincipal) -> TrainRunOut:
    return run_view(service.get_run(session=session, run_id=run_id, owner=principal.owner))


@router.post(
    "/{run_id}/cancel",
    response_model=TrainRunOut,
    summary="Cancel a run: a queued one at once, a running one within seconds",
    responses={**_NOT_FOUND, 409: {"description": "The run already finished"}},
)
def cancel_run(run_id: uuid.UUID, session: SessionDep, principal: TrainPrincipal) -> TrainRunOut:
    return run_view(service.request_cancel(session=session, run_id=run_id, owner=principal.owner))
