"""A training run on a training worker, by id: lease, train, publish and gate, finish.

Safe to run twice for the same run id: a Redis lease keeps two workers from training the same
run at once, a finished run is left alone, a run whose version was already published is only
marked finished, and an interrupted run resumes from its last epoch checkpoint. That is what
makes ``acks_late`` right for the task that calls ``execute_run``: a worker killed mid-run gets
the run back on restart.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.tables import ApiKey, ModelVersion, RunStatus, TrainingRun
from shared.registry import service as registry
from shared.registry.gate import GateSet
from shared.registry.publish import publish_and_gate
from shared.training import service
from shared.training.errors import DataError
from shared.training.params import TrainParams
from shared.training.references import DataSpec
from shared.training.uploads import fetch_uploads, local_spec

log = logging.getLogger(__name__)

LEASE_KEY = "ner:train:lease:{run_id}"
LEASE_TTL_S = 30  # a dead worker's lease lapses this fast, so its run can be picked up again
LEASE_REFRESH_S = 10


class _Lease:
    """A Redis key held while a run trains, refreshed by a thread; absent means nobody trains it."""

    def __init__(self, client: redis.Redis, run_id: uuid.UUID) -> None:
        self.client = client
        self.key = LEASE_KEY.format(run_id=run_id)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="train-lease", daemon=True)

    def acquire(self) -> bool:
        if not self.client.set(self.key, self.token, nx=True, ex=LEASE_TTL_S):
            return False
        self._thread.start()
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(LEASE_REFRESH_S):
            try:
                self.client.set(self.key, self.token, xx=True, ex=LEASE_TTL_S)
            except redis.RedisError:
                log.warning("could not refresh the training lease %s", self.key)

    def release(self) -> None:
        self._stop.set()
        try:
            if self.client.get(self.key) == self.token.encode():
                self.client.delete(self.key)
        except redis.RedisError:
            pass  # it lapses by itself


@contextmanager
def _session() -> Iterator:
    with session_scope() as session:
        yield session


def run_dir(settings: Settings, run_id: uuid.UUID) -> Path:
    return settings.state_dir / "runs" / str(run_id)


def _hooks(run_id: uuid.UUID):  # type: ignore[no-untyped-def]
    from trainer.training import RunHooks

    def on_start(total: int, resumed_from: int) -> None:
        with _session() as session:
            service.record_start(session=session, run_id=run_id, total_steps=total, resumed_from=resumed_from)

    def on_progress(step: int, total: int) -> None:
        with _session() as session:
            service.record_progress(session=session, run_id=run_id, step=step, total_steps=total)

    def on_epoch(row) -> None:  # type: ignore[no-untyped-def]
        log.info("run %s epoch %s: %s", run_id, row.epoch, row.as_dict())
        with _session() as session:
            service.record_epoch(session=session, run_id=run_id, values=row.as_dict())

    def should_stop() -> bool:
        with _session() as session:
            return service.cancel_requested(session=session, run_id=run_id) or _key_revoked(session, run_id)

    return RunHooks(on_start=on_start, on_progress=on_progress, on_epoch=on_epoch, should_stop=should_stop)


def _key_revoked(session: Session, run_id: uuid.UUID) -> bool:
    """Whether the API key that started the run has been revoked since."""
    revoked_at = session.scalar(
        select(ApiKey.revoked_at)
        .join(TrainingRun, TrainingRun.api_key_id == ApiKey.id)
        .where(TrainingRun.id == run_id)
    )
    return revoked_at is not None


def execute_run(*, run_id: uuid.UUID, settings: Settings) -> RunStatus | None:
    """Train, publish and gate one run; returns its final status (None when another worker has it)."""
    client = redis.Redis.from_url(settings.redis_url)
    lease = _Lease(client, run_id)
    if not lease.acquire():
        log.info("run %s is being trained by another worker", run_id)
        return None
    try:
        return _execute(run_id=run_id, settings=settings)
    finally:
        lease.release()
        client.close()


def _execute(*, run_id: uuid.UUID, settings: Settings) -> RunStatus | None:
    folder = run_dir(settings, run_id)
    with _session() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            log.warning("run %s does not exist", run_id)
            return None
        if run.status in service.FINISHED:
            return run.status
        published = session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run_id))
        if published is not None:
            # Published before the worker died; only the bookkeeping is missing.
            service.finish(
                session=session, run_id=run_id, status=RunStatus.succeeded, model_version=published.version
            )
            return RunStatus.succeeded
        if run.cancel_requested or _key_revoked(session, run_id):
            # Also when the key was revoked by a path that did not cancel its runs: nothing is
            # trained (or promoted) for a revoked key.
            service.finish(session=session, run_id=run_id, status=RunStatus.cancelled)
            return RunStatus.cancelled
        service.mark_running(session=session, run=run, checkpoint_dir=str(folder / "checkpoints"))
        data_ref, params_dict, base_model = dict(run.data), dict(run.params), run.base_model

    try:
        status = _train_and_publish(
            run_id=run_id, settings=settings, folder=folder, data_ref=data_ref, params_dict=params_dict,
            base_model=base_model,
        )  # fmt: skip
    except DataError as exc:
        # Bad input: the run fails before any training step, with the file and line in the message.
        status = _fail(run_id, str(exc))
    except SoftTimeLimitExceeded:
        status = _fail(run_id, f"time limit of {settings.training_time_limit_s} s reached")
    except Exception as exc:  # anything else fails this run; the worker carries on
        log.exception("run %s failed", run_id)
        status = _fail(run_id, f"{type(exc).__name__}: {exc}")
    if status in service.FINISHED:
        shutil.rmtree(folder, ignore_errors=True)
    return status


def _fail(run_id: uuid.UUID, message: str) -> RunStatus:
    with _session() as session:
        service.finish(session=session, run_id=run_id, status=RunStatus.failed, error=message)
    return RunStatus.failed


def resolve_data(*, data_ref: dict, settings: Settings) -> DataSpec:
    """A run's data as this host's files: its uploads (``upload:<id>/<name>``) fetched from the
    artifact store when a gateway on another host received them, and named by their local paths."""
    spec = DataSpec.parse(data_ref)
    with _session() as session:
        fetch_uploads(session=session, settings=settings, spec=spec)
    return local_spec(spec, settings=settings)


def _train_and_publish(
    *,
    run_id: uuid.UUID,
    settings: Settings,
    folder: Path,
    data_ref: dict,
    params_dict: dict,
    base_model: str,
) -> RunStatus:
    from shared.predict.engine import EngineOptions
    from trainer import card, evaluation
    from trainer.pipeline import run_pipeline

    params = TrainParams.from_dict(params_dict)
    spec = resolve_data(data_ref=data_ref, settings=settings)
    data, result = run_pipeline(
        spec=spec,
        params=params,
        base_model=base_model,
        roots=service.allowed_roots(settings),
        cache_dir=settings.state_dir / "cache" / "datasets",
        output_dir=folder / "model",
        checkpoint_dir=folder / "checkpoints",
        hooks=_hooks(run_id),
    )
    if result.cancelled:
        with _session() as session:
            service.finish(session=session, run_id=run_id, status=RunStatus.cancelled)
        return RunStatus.cancelled

    # The scores a version is reported and judged by are the ones its users get: through the engine.
    options = EngineOptions.from_settings(settings)
    engine_scores = evaluation.engine_reports(model_dir=result.model_dir, data=data, options=options)
    candidate = card.candidate(
        result=result, base_model=base_model, data=data, params=params, training_run_id=run_id,
        engine_scores=engine_scores,
    )  # fmt: skip
    try:
        gate_set = evaluation.gate_set_from_settings(settings, options=options)
    except DataError as exc:  # the operator's gate data is unusable: nothing is promoted automatically
        log.error("no gate set: %s", exc)
        gate_set = None
    if gate_set is not None:
        gate_set = _scored_from_cache(gate_set, settings)
    with _session() as session:
        if service.cancel_requested(session=session, run_id=run_id) or _key_revoked(session, run_id):
            # Cancelled, or its key revoked, while the engine scored it: nothing is published.
            service.finish(session=session, run_id=run_id, status=RunStatus.cancelled)
            return RunStatus.cancelled
        published = publish_and_gate(
            session=session,
            artifacts_dir=settings.artifacts_dir,
            candidate=candidate,
            policy=settings.promote_policy,
            redis_url=settings.redis_url,
            gate_set=gate_set,
            type_margin=settings.gate_type_margin,
            default_base_model=settings.base_model,
            settings=settings,
        )
        service.finish(
            session=session,
            run_id=run_id,
            status=RunStatus.succeeded,
            model_version=published.version.version,
            promoted=published.promoted,
            test_metrics={
                **(result.test or {}), "validation": result.validation, "engine": engine_scores,
                "gate": published.reason, "gate_decision": published.decision.decision,
            },
        )  # fmt: skip
    return RunStatus.succeeded


def _scored_from_cache(gate_set: GateSet, settings: Settings) -> GateSet:
    """The gate scores model folders; a version in the artifact store is scored from this node's
    verified copy (the candidate is already there: publishing cached it)."""
    score = gate_set.score

    def local_score(path: str):  # type: ignore[no-untyped-def]
        return score(registry.verify_folder(path=path, settings=settings))

    return dataclasses.replace(gate_set, score=local_score)


def requeue_orphaned_runs(*, settings: Settings) -> list[uuid.UUID]:
    """Re-queue runs marked running whose lease lapsed: their worker died mid-run."""
    from shared.core.db import make_engine

    # A private engine: this runs in the worker's parent process, whose pooled connections the
    # forked pool children must not inherit.
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        with Session(engine) as session:
            running = session.scalars(
                select(TrainingRun.id).where(TrainingRun.status == RunStatus.running)
            ).all()
        orphans = [run_id for run_id in running if not client.exists(LEASE_KEY.format(run_id=run_id))]
        for run_id in orphans:
            log.info("re-queueing interrupted training run %s", run_id)
            service.enqueue_run(run_id=run_id)
        return orphans
    finally:
        client.close()
        engine.dispose()
