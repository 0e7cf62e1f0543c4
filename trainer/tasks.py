"""The Celery task ``ner.train.run``: one training run, by id, on the ``training`` queue.

The body is safe to run twice for the same run id: a Redis lease keeps two workers from training
the same run at once, a finished run is left alone, a run whose version was already published is
only marked finished, and an interrupted run resumes from its last epoch checkpoint. That is what
makes ``acks_late`` right here: a worker killed mid-run gets the run back on restart.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from shared.celery_app import TRAINING_QUEUE, celery_app
from shared.config import Settings, get_settings
from shared.db import session_scope
from shared.models import ModelVersion, RunStatus, TrainingRun
from trainer import service
from trainer.conll import DataError

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
            service.record_epoch(session=session, run_id=run_id, row=row)

    def should_stop() -> bool:
        with _session() as session:
            return service.cancel_requested(session=session, run_id=run_id)

    return RunHooks(on_start=on_start, on_progress=on_progress, on_epoch=on_epoch, should_stop=should_stop)


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
        if run.cancel_requested:
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


def _train_and_publish(
    *,
    run_id: uuid.UUID,
    settings: Settings,
    folder: Path,
    data_ref: dict,
    params_dict: dict,
    base_model: str,
) -> RunStatus:
    import datasets
    import transformers

    from shared import registry
    from trainer.data import load_data
    from trainer.publish import publish_version
    from trainer.references import DataSpec
    from trainer.training import TrainParams, run_training

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # the load report of a new head is expected
    params = TrainParams.from_dict(params_dict)
    data = load_data(
        DataSpec.parse(data_ref),
        roots=service.allowed_roots(settings),
        cache_dir=settings.state_dir / "cache" / "datasets",
        validation_fraction=params.validation_fraction,
        seed=params.seed,
    )
    result = run_training(
        data=data,
        base_model=base_model,
        params=params,
        output_dir=folder / "model",
        checkpoint_dir=folder / "checkpoints",
        hooks=_hooks(run_id),
    )
    if result.cancelled:
        with _session() as session:
            service.finish(session=session, run_id=run_id, status=RunStatus.cancelled)
        return RunStatus.cancelled

    with _session() as session:
        version = publish_version(
            session=session,
            artifacts_dir=settings.artifacts_dir,
            result=result,
            base_model=base_model,
            data=data,
            params=params,
            training_run_id=run_id,
        )
        promoted, reason = registry.gate(session=session, candidate=version, policy=settings.promote_policy)
        if promoted:
            registry.promote(session=session, version=version.version, redis_url=settings.redis_url)
        log.info("run %s published version %s; promoted=%s (%s)", run_id, version.version, promoted, reason)
        service.finish(
            session=session,
            run_id=run_id,
            status=RunStatus.succeeded,
            model_version=version.version,
            promoted=promoted,
            test_metrics={**(result.test or {}), "validation": result.validation, "gate": reason},
        )
    return RunStatus.succeeded


@celery_app.task(
    name=service.TRAIN_TASK,
    bind=True,
    acks_late=True,
    time_limit=get_settings().training_time_limit_s,
    soft_time_limit=max(1, get_settings().training_time_limit_s - 60),
    autoretry_for=(OperationalError,),  # the database restarting is transient; bad data is not
    retry_backoff=True,
    max_retries=5,
)
def train_run(self, run_id: str) -> str | None:  # type: ignore[no-untyped-def]
    """Train one run (see the module docstring for why running it twice is safe)."""
    status = execute_run(run_id=uuid.UUID(run_id), settings=get_settings())
    return status.value if status else None


def requeue_orphaned_runs(*, settings: Settings) -> list[uuid.UUID]:
    """Re-queue runs marked running whose lease lapsed: their worker died mid-run."""
    from sqlalchemy.orm import Session

    from shared.db import make_engine

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


def _watch_for_orphans(settings: Settings) -> None:
    # Check at once, and again once the lease of a worker killed just before this start has lapsed.
    for delay in (0, LEASE_TTL_S + 2):
        threading.Event().wait(delay)
        try:
            requeue_orphaned_runs(settings=settings)
        except Exception:  # never take the worker down over this
            log.exception("could not check for interrupted training runs")


@signals.worker_ready.connect
def _resume_orphaned_runs(sender=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    """On a trainer's start, re-queue runs left running by a worker that died.

    Redis would re-deliver their unacknowledged messages only after the visibility timeout (hours);
    the re-queued message resumes from the last checkpoint at once.
    """
    consumer = getattr(sender, "task_consumer", None)
    queues = {queue.name for queue in getattr(consumer, "queues", [])}
    if TRAINING_QUEUE in queues:
        threading.Thread(target=_watch_for_orphans, args=(get_settings(),), daemon=True).start()
