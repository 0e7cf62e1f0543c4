"""The Celery tasks of the ``training`` queue: ``ner.train.run`` (a thin entry over ``trainer.runs``) and
``ner.registry.score_import`` (gate scores of a version imported through the API).

``acks_late`` is right here because ``execute_run`` is safe to run twice (see ``trainer.runs``).
"""

from __future__ import annotations

import logging
import threading
import uuid

from celery import signals
from sqlalchemy.exc import OperationalError

from shared.core.celery_app import TRAINING_QUEUE, celery_app
from shared.core.config import Settings, get_settings
from shared.core.db import get_sessionmaker
from shared.registry import importer
from shared.registry import service as registry
from shared.training import service
from trainer.runs import LEASE_TTL_S, execute_run, requeue_orphaned_runs

log = logging.getLogger(__name__)


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


@celery_app.task(name=importer.SCORE_TASK, acks_late=True, time_limit=1800, soft_time_limit=1740)
def score_import(version: int) -> str | None:
    """Gate scores of a version imported through the API (held; acks_late: scoring twice is harmless)."""
    from trainer.evaluation import gate_set_from_settings  # the engine: only once there is work

    settings = get_settings()
    gate_set = gate_set_from_settings(settings)
    if gate_set is None:  # no gate set configured: nothing to score on
        return None
    with get_sessionmaker()() as session:
        row = registry.get_version(session=session, version=version)
        if row is None:
            return None
        source = (row.data_ref or {}).get("imported_from", f"version {version}")
        return importer.score_on_gate(session=session, row=row, gate_set=gate_set, source=source).decision


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
