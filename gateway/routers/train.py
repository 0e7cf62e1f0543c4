"""Training runs: start (data by reference or upload), watch epoch by epoch, cancel."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, UploadFile, status
from kombu.exceptions import OperationalError as KombuOperationalError

from gateway.deps import Principal, SessionDep, SettingsDep, require_scope
from shared.logging import get_request_id
from shared.models import RunStatus, TrainingRun
from shared.schemas import TrainAccepted, TrainRequest, TrainRunList, TrainRunOut, UploadOut
from shared.training_status import eta_seconds, progress
from trainer import service
from trainer.conll import DataError
from trainer.params import TrainParams
from trainer.references import DataSpec

router = APIRouter(prefix="/train", tags=["train"])

TrainPrincipal = Annotated[Principal, Depends(require_scope("train"))]
_NOT_FOUND = {404: {"description": "No such training run (or not one of this API key's)"}}
UPLOAD_MAX_BYTES = 2 * 1024**3
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def run_view(run: TrainingRun) -> TrainRunOut:
    params = {k: v for k, v in (run.params or {}).items() if not k.startswith("_")}
    return TrainRunOut(
        run_id=run.id,
        status=run.status.value,
        step=run.step,
        total_steps=run.total_steps,
        progress=round(progress(run), 4),
        eta_seconds=eta_seconds(run),
        epochs=[
            {
                "epoch": e.epoch,
                "train_loss": e.train_loss,
                "val_loss": e.val_loss,
                "precision": e.precision,
                "recall": e.recall,
                "f1": e.f1,
                "accuracy": e.accuracy,
            }
            for e in run.epochs
        ],
        error=run.error,
        model_version=run.model_version,
        promoted=run.promoted,
        test_metrics=run.test_metrics or {},
        params=params,
        data=run.data or {},
        base_model=run.base_model,
        cancel_requested=run.cancel_requested,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def _visible_run(session: SessionDep, run_id: uuid.UUID, principal: Principal) -> TrainingRun:
    try:
        run = service.get_run(session=session, run_id=run_id)
    except service.RunNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    if not principal.is_admin and run.api_key_id != principal.key_id:
        # 404, not 403: run ids of other keys do not leak.
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"training run {run_id} does not exist")
    return run


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TrainAccepted,
    summary="Start a training run (queued on the training workers)",
    responses={422: {"description": "Bad parameters, or data outside NER_DATA_ROOTS / not found"}},
)
def start_run(
    body: TrainRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: TrainPrincipal,
) -> TrainAccepted:
    overrides = body.model_dump(exclude_none=True, exclude={"data", "base_model"})
    try:
        params = TrainParams(**{"loss": settings.train_loss, **overrides})
        spec = DataSpec.parse(
            body.data if isinstance(body.data, str) else body.data.model_dump(exclude_none=True)
        )
        run = service.create_run(
            session=session,
            settings=settings,
            data=spec,
            params=params.as_dict(),
            base_model=body.base_model,
            api_key_id=principal.key_id,
            request_id=get_request_id(),
        )
    except (DataError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
    try:
        service.enqueue_run(run_id=run.id)
    except (KombuOperationalError, OSError) as exc:
        service.finish(
            session=session, run_id=run.id, status=RunStatus.failed, error=f"could not queue: {exc}"
        )
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="the broker is unreachable; the run was not queued"
        ) from None
    return TrainAccepted(
        run_id=run.id, status=run.status.value, status_url=str(request.url_for("get_run", run_id=run.id))
    )


@router.get("", response_model=TrainRunList, summary="Recent training runs, newest first")
def list_runs(
    session: SessionDep, principal: TrainPrincipal, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> TrainRunList:
    runs = service.list_runs(session=session, limit=limit)
    visible = [run for run in runs if principal.is_admin or run.api_key_id == principal.key_id]
    return TrainRunList(runs=[run_view(run) for run in visible])


@router.post(
    "/uploads",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    summary="Upload a data file (CoNLL or JSONL) into the uploads folder; reference it in POST /train",
)
async def upload_data(file: UploadFile, settings: SettingsDep, principal: TrainPrincipal) -> UploadOut:
    name = _UNSAFE.sub("_", (file.filename or "data").rsplit("/", 1)[-1]).strip("._") or "data"
    folder = settings.uploads_dir / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as handle:
        while chunk := await file.read(1 << 20):
            size += len(chunk)
            if size > UPLOAD_MAX_BYTES:
                handle.close()
                target.unlink(missing_ok=True)
                folder.rmdir()
                raise HTTPException(
                    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                    detail=f"upload larger than {UPLOAD_MAX_BYTES} bytes",
                )
            digest.update(chunk)
            handle.write(chunk)
    if size == 0:
        target.unlink(missing_ok=True)
        folder.rmdir()
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{name}: the uploaded file is empty"
        )
    return UploadOut(path=str(target), bytes=size, sha256=digest.hexdigest())


@router.get(
    "/{run_id}",
    response_model=TrainRunOut,
    summary="A run's status, progress, ETA and epochs",
    responses=_NOT_FOUND,
)
def get_run(run_id: uuid.UUID, session: SessionDep, principal: TrainPrincipal) -> TrainRunOut:
    return run_view(_visible_run(session, run_id, principal))


@router.post(
    "/{run_id}/cancel",
    response_model=TrainRunOut,
    summary="Cancel a run: a queued one at once, a running one within seconds",
    responses={**_NOT_FOUND, 409: {"description": "The run already finished"}},
)
def cancel_run(run_id: uuid.UUID, session: SessionDep, principal: TrainPrincipal) -> TrainRunOut:
    _visible_run(session, run_id, principal)
    try:
        run = service.request_cancel(session=session, run_id=run_id)
    except service.RunFinished as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return run_view(run)
