"""Bootstrap: with an empty registry and no NER_MODEL, train a first model on NER_BOOTSTRAP_DATA.

``ner up`` calls ``prepare_local_stack`` before it starts the trainer, so the queued run is the
trainer's first task; /predict/ meanwhile says the model is training and how far it is
(``shared.training.status.no_model_message``).
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.tables import ModelVersion, RunStatus, TrainingRun
from shared.training import service
from shared.training.errors import DataError
from shared.training.params import TrainParams
from shared.training.references import DataSpec

log = logging.getLogger(__name__)

BOOTSTRAP_KEY = "bootstrap"  # marks the run in its params


def ensure_bootstrap_run(*, session: Session, settings: Settings, enqueue: bool = True) -> TrainingRun | None:
    """Queue the first training run when there is nothing to serve; None when none is needed.

    Nothing is queued when NER_MODEL is set, when any version is registered, when
    NER_BOOTSTRAP_DATA is unset, or when a bootstrap run is already queued, running or done.
    """
    if settings.model or not settings.bootstrap_data:
        return None
    if session.scalar(select(ModelVersion.version).limit(1)) is not None:
        return None
    existing = session.scalars(
        select(TrainingRun).where(
            TrainingRun.status.in_([RunStatus.queued, RunStatus.running, RunStatus.succeeded])
        )
    ).all()
    for run in existing:
        if (run.params or {}).get(BOOTSTRAP_KEY):
            return run if run.status != RunStatus.succeeded else None
    params = {**TrainParams(loss=settings.train_loss).as_dict(), BOOTSTRAP_KEY: True}
    run = service.create_run(
        session=session,
        settings=settings,
        data=DataSpec.parse(settings.bootstrap_data),
        params=params,
        base_model=settings.base_model,
    )
    if enqueue:
        service.enqueue_run(run_id=run.id)
    log.info("queued bootstrap training run %s on %s", run.id, settings.bootstrap_data)
    return run


def prepare_local_stack(*, settings: Settings, env: dict[str, str]) -> None:
    """``ner up`` hook: queue the bootstrap run on the broker the stack's children will use."""
    from shared.core.celery_app import celery_app, configure
    from shared.core.db import make_engine

    redis_url = env.get("NER_REDIS_URL", settings.redis_url)
    if redis_url != settings.redis_url:
        configure(celery_app, settings.model_copy(update={"redis_url": redis_url}))
    engine = make_engine(env.get("NER_DATABASE_URL", settings.database_url))
    try:
        with Session(engine, expire_on_commit=False) as session:
            run = ensure_bootstrap_run(session=session, settings=settings)
        if run is not None:
            print(f"ner up: no model yet; training a first one on {settings.bootstrap_data} (run {run.id})")
    except DataError as exc:
        print(f"ner up: cannot start the bootstrap training run: {exc}")
    finally:
        engine.dispose()
