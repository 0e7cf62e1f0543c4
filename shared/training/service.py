"""Training runs in the database: create, read, cancel, and the row updates a running run makes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.tables import RunStatus, TrainingEpoch, TrainingRun
from shared.keys.owner import Owner
from shared.training import uploads
from shared.training.errors import (
    BaseModelNotAllowed,
    BrokerUnavailable,
    DataError,
    RunFinished,
    RunNotFound,
    RunQuotaExceeded,
)
from shared.training.params import TrainParams
from shared.training.references import (
    HUB_ID,
    DataSpec,
    HubModelRef,
    ModelInfo,
    check_hub_base_model,
    check_references,
    resolve_local,
)

TRAIN_TASK = "ner.train.run"
FINISHED = (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)
RESUMED_FROM_KEY = "_resumed_from_step"  # kept in params by the worker, for the ETA after a resume


def allowed_roots(settings: Settings) -> list[Path]:
    """Folders training data may come from: NER_DATA_ROOTS, plus the operator's bootstrap data."""
    roots = list(settings.data_roots)
    if settings.bootstrap_data:
        path = Path(settings.bootstrap_data).expanduser()
        if path.exists():
            roots.append(path.resolve())
    return roots


def check_base_model(base_model: str, *, settings: Settings, require_pin: bool = True) -> None:
    """A base model is the configured one, a pinned hub id, or a folder under the data roots or artifacts.

    Any other local path is refused: a request must not make the trainer read arbitrary folders.
    """
    if base_model == settings.base_model:
        return  # the operator's own choice
    if HubModelRef.parse(base_model):
        return  # a pinned Hugging Face model (its size: check_base_model_size)
    path = Path(base_model).expanduser()
    local = path.is_absolute() or base_model.startswith((".", "~")) or ".." in path.parts
    if not local and HUB_ID.match(base_model.split("@", 1)[0]) and not path.exists():
        if not require_pin:
            return
        # Also on NER_BASE_MODEL_ALLOW: a moving branch could swap the weights under the operator.
        raise DataError(
            f"base_model: {base_model!r}: a Hugging Face model id needs a pinned revision, "
            "'owner/name@<40-hex commit sha>'"
        )
    if base_model in settings.base_model_allow:
        return  # an operator's local folder
    resolved = path.resolve()
    allowed = [*allowed_roots(settings), settings.artifacts_dir]
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        raise DataError(
            f"base_model: {base_model!r} is neither a Hugging Face model id nor a folder inside "
            "NER_DATA_ROOTS or NER_ARTIFACTS_DIR"
        )


def check_base_model_size(
    base_model: str | None, *, settings: Settings, model_info: ModelInfo | None = None
) -> None:
    """A pinned Hub base model must list at most NER_BASE_MODEL_MAX_BYTES (422), asked before download.

    A Hub that does not answer here lets the request through: the trainer asks again before it
    downloads anything and fails the run then.
    """
    ref = HubModelRef.parse(base_model or "")
    if ref is not None and base_model != settings.base_model:
        check_hub_base_model(
            ref, max_bytes=settings.base_model_max_bytes, model_info=model_info, unreachable_ok=True
        )


def check_base_model_allowed(base_model: str | None, *, settings: Settings, owner: Owner) -> None:
    """Only admin keys, or an id on NER_BASE_MODEL_ALLOW, may train from another base model (403).

    Any other key could otherwise make the trainer download an arbitrary (huge) hub model.
    """
    if not base_model or base_model == settings.base_model or owner.admin:
        return
    if base_model in settings.base_model_allow:
        return
    raise BaseModelNotAllowed(
        "base_model: only an admin key may choose a base model other than the configured one, "
        "unless it is on the operator's list (NER_BASE_MODEL_ALLOW)"
    )


def check_run_quota(*, session: Session, settings: Settings, owner: Owner) -> None:
    """A key may have NER_TRAIN_MAX_QUEUED_RUNS runs queued or running at once (429 past it)."""
    if owner.key_id is None:
        return
    active = session.scalar(
        select(func.count())
        .select_from(TrainingRun)
        .where(
            TrainingRun.api_key_id == owner.key_id,
            TrainingRun.status.in_([RunStatus.queued, RunStatus.running]),
        )
    )
    if (active or 0) >= settings.train_max_queued_runs:
        raise RunQuotaExceeded(
            f"this API key already has {active} training runs queued or running "
            f"(NER_TRAIN_MAX_QUEUED_RUNS={settings.train_max_queued_runs}); wait for one to finish"
        )


def check_upload_owner(data: DataSpec, *, session: Session, settings: Settings, owner: Owner) -> None:
    """References into the uploads folder must name the caller's own uploads (as missing if not).

    An upload (``upload:<id>/<name>``) is looked up in the database and the artifact store, so one
    received by a gateway on another host is accepted too; its path is never the caller's to choose.
    """
    for key, ref in data.as_dict().items():
        upload = uploads.upload_key_of(ref, settings=settings)
        if upload is not None:
            if uploads.usable_upload(session=session, settings=settings, owner=owner, key=upload) is None:
                raise DataError(f"data.{key}: {ref}: no such file or folder")
            continue
        path = resolve_local(ref, roots=allowed_roots(settings), allow_hub=settings.allow_hub_data)
        owned = path is None or uploads.owns_upload(
            session=session, settings=settings, owner=owner, path=path
        )
        if not owned:
            raise DataError(f"data.{key}: {ref}: no such file or folder")


def create_run(
    *,
    session: Session,
    settings: Settings,
    data: DataSpec,
    params: dict[str, Any],
    base_model: str | None = None,
    api_key_id: int | None = None,
    request_id: str | None = None,
) -> TrainingRun:
    """Check the data references and store a queued run (committed); the caller enqueues it.

    Uploads are only checked for their form here: ``start_run`` checks that they exist and whose they are.
    """
    check_references(data, roots=allowed_roots(settings), allow_hub=settings.allow_hub_data)
    if base_model:
        check_base_model(base_model, settings=settings)
    run = TrainingRun(
        status=RunStatus.queued,
        params=params,
        data=data.as_dict(),
        base_model=base_model or settings.base_model,
        api_key_id=api_key_id,
        request_id=request_id,
    )
    session.add(run)
    session.commit()
    return run


def enqueue_run(*, run_id: uuid.UUID) -> None:
    """Send the run to the training queue (by name: the gateway does not import torch)."""
    from shared.core.celery_app import celery_app

    celery_app.send_task(TRAIN_TASK, args=[str(run_id)])


def start_run(
    *,
    session: Session,
    settings: Settings,
    data: str | dict[str, Any],
    overrides: dict[str, Any],
    base_model: str | None,
    owner: Owner,
    request_id: str | None,
    model_info: ModelInfo | None = None,
) -> TrainingRun:
    """Check a request, store the run and queue it; a broker that is down fails the run (503)."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    params = TrainParams(**{"loss": settings.train_loss, **overrides})
    if base_model:
        # A path outside the roots: 422 for anyone; then 403 for a key that may not choose; then
        # a Hub id without a pinned commit (422) and one too large (422).
        check_base_model(base_model, settings=settings, require_pin=False)
        check_base_model_allowed(base_model, settings=settings, owner=owner)
        check_base_model(base_model, settings=settings)
        check_base_model_size(base_model, settings=settings, model_info=model_info)
    # Uploads are recorded as upload:<id>/<name>, whichever form the request used: any trainer,
    # on any host, resolves that under its own uploads folder.
    spec = uploads.normalized(DataSpec.parse(data), settings=settings)
    check_references(spec, roots=allowed_roots(settings), allow_hub=settings.allow_hub_data)
    check_upload_owner(spec, session=session, settings=settings, owner=owner)
    check_run_quota(session=session, settings=settings, owner=owner)
    run = create_run(
        session=session,
        settings=settings,
        data=spec,
        params=params.as_dict(),
        base_model=base_model,
        api_key_id=owner.key_id,
        request_id=request_id,
    )
    try:
        enqueue_run(run_id=run.id)
    except (KombuOperationalError, OSError) as exc:
        finish(session=session, run_id=run.id, status=RunStatus.failed, error=f"could not queue: {exc}")
        raise BrokerUnavailable("the broker is unreachable; the run was not queued") from None
    return run


def purge_expired_uploads(*, session: Session, settings: Settings) -> int:
    """Delete training uploads past NER_TRAIN_UPLOAD_RETENTION_DAYS (the clean-up schedule's task)."""
    return uploads.purge_expired_uploads(session=session, settings=settings)


def get_run(*, session: Session, run_id: uuid.UUID, owner: Owner | None = None) -> TrainingRun:
    """One run; 404 when it does not exist or ``owner`` may not see it (ids of other keys do not leak)."""
    run = session.get(TrainingRun, run_id)
    if run is None or (owner is not None and not owner.sees(run.api_key_id)):
        raise RunNotFound(f"training run {run_id} does not exist")
    return run


def list_runs(*, session: Session, owner: Owner | None = None, limit: int = 50) -> list[TrainingRun]:
    """The newest runs first (only the owner's, unless admin)."""
    query = select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(limit)
    if owner is not None and not owner.admin:
        query = query.where(TrainingRun.api_key_id == owner.key_id)
    return list(session.scalars(query))


def request_cancel(*, session: Session, run_id: uuid.UUID, owner: Owner | None = None) -> TrainingRun:
    """A queued run is cancelled at once; a running one stops within seconds (the worker checks)."""
    get_run(session=session, run_id=run_id, owner=owner)
    run = session.get(TrainingRun, run_id, with_for_update=True)
    if run is None:
        raise RunNotFound(f"training run {run_id} does not exist")
    if run.status in FINISHED:
        raise RunFinished(f"training run {run_id} already {run.status.value}")
    run.cancel_requested = True
    if run.status == RunStatus.queued:
        run.status = RunStatus.cancelled
        run.finished_at = datetime.now(UTC)
    session.commit()
    return run


def cancel_key_runs(*, session: Session, api_key_id: int) -> int:
    """Cancel every queued or running run of a revoked key; returns how many.

    A queued run is cancelled at once; a running one stops at its next check and is not published.
    """
    runs = session.scalars(
        select(TrainingRun)
        .where(TrainingRun.api_key_id == api_key_id, TrainingRun.status.not_in(FINISHED))
        .with_for_update()
    ).all()
    for run in runs:
        run.cancel_requested = True
        if run.status == RunStatus.queued:
            run.status = RunStatus.cancelled
            run.finished_at = datetime.now(UTC)
    session.commit()
    return len(runs)


# --- updates made by the worker -----------------------------------------------------------------


def mark_running(*, session: Session, run: TrainingRun, checkpoint_dir: str) -> None:
    run.status = RunStatus.running
    run.started_at = datetime.now(UTC)
    run.checkpoint_dir = checkpoint_dir
    run.error = None
    session.commit()


def record_start(*, session: Session, run_id: uuid.UUID, total_steps: int, resumed_from: int) -> None:
    run = get_run(session=session, run_id=run_id)
    run.total_steps = total_steps
    run.step = resumed_from
    run.params = {**(run.params or {}), RESUMED_FROM_KEY: resumed_from}
    run.started_at = datetime.now(UTC)
    session.commit()


def record_progress(*, session: Session, run_id: uuid.UUID, step: int, total_steps: int) -> None:
    run = get_run(session=session, run_id=run_id)
    run.step, run.total_steps = step, total_steps
    session.commit()


def record_epoch(*, session: Session, run_id: uuid.UUID, values: dict[str, Any]) -> None:
    """Upsert by (run, epoch): an epoch reported again after a resume replaces its row.

    ``values``: the epoch's number and scores (``trainer.metrics.EpochMetrics.as_dict()``).
    """
    session.merge(TrainingEpoch(run_id=run_id, **values))
    session.commit()


def cancel_requested(*, session: Session, run_id: uuid.UUID) -> bool:
    return bool(session.scalar(select(TrainingRun.cancel_requested).where(TrainingRun.id == run_id)))


def finish(
    *,
    session: Session,
    run_id: uuid.UUID,
    status: RunStatus,
    error: str | None = None,
    **values: Any,
) -> TrainingRun:
    run = get_run(session=session, run_id=run_id)
    run.status = status
    run.error = error
    run.finished_at = datetime.now(UTC)
    for key, value in values.items():
        setattr(run, key, value)
    session.commit()
    return run
