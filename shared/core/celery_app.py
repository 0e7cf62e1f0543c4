"""The one Celery app: queues, routes and task defaults for the inference and training workers."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from kombu import Queue

from shared.core.config import Settings, get_settings

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"


# Redis re-delivers a message nobody acknowledged after the visibility timeout (a worker whose main
# process was killed). It must outlast the queue's longest task, or a long task runs twice; and no
# more, or a lost chunk waits for the training limit (6 h) instead of its own (1 h).
VISIBILITY_MARGIN_S = 300


def transport_options(settings: Settings, queue: str = INFERENCE_QUEUE) -> dict[str, Any]:
    """The broker options of a process consuming ``queue``: that queue's own visibility timeout.

    The Redis transport keeps unacknowledged messages in one hash per key name and every consumer
    restores what is older than *its* timeout, so the training queue keeps its own keys: an
    inference worker's shorter timeout never re-delivers a run that is still training.
    """
    if queue == TRAINING_QUEUE:
        return {
            "visibility_timeout": settings.training_time_limit_s + VISIBILITY_MARGIN_S,
            "unacked_key": "unacked_training",
            "unacked_index_key": "unacked_index_training",
            "unacked_mutex_key": "unacked_mutex_training",
        }
    # Kombu's default key names: every process that is not the trainer (gateway, beat, Flower,
    # inference workers) sees only inference messages there, under the inference timeout.
    return {"visibility_timeout": settings.task_time_limit_s + VISIBILITY_MARGIN_S}


def configure(app: Celery, settings: Settings) -> None:
    """Apply ``settings`` to ``app`` (again, when tests point it at another broker)."""
    app.conf.update(
        broker_url=settings.redis_url,
        task_queues=[Queue(INFERENCE_QUEUE), Queue(TRAINING_QUEUE)],
        task_default_queue=INFERENCE_QUEUE,
        task_routes={
            "ner.jobs.*": {"queue": INFERENCE_QUEUE},
            "ner.train.*": {"queue": TRAINING_QUEUE},
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Task bodies are idempotent (upserts keyed by job and document), so a task is acknowledged
        # only once it finished and is re-delivered when its worker dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 30),
        # Per queue: a training worker switches to its queue's options when it starts (below).
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        # Flower sees every task and worker.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        timezone="UTC",
        # An inference process loads its model in worker_process_init (after the fork, so CUDA
        # starts in the child); Celery's default 4 s to report "up" is far too short for that.
        worker_proc_alive_timeout=300.0,
        # A pool child that died is reported (WorkerLostError) after this wait for a result it might
        # still have sent; results are not used here, and the worker re-sends the dead child's chunk
        # as soon as it is reported (worker.tasks): Celery's 10 s would be most of the recovery.
        worker_lost_wait=1.0,
        # `ner worker --beat`: delete expired jobs; a late message is dropped, the next one comes.
        beat_schedule={
            "purge-expired-jobs": {
                "task": "ner.jobs.purge_expired",
                "schedule": settings.purge_interval_s,
                "options": {"expires": settings.purge_interval_s},
            },
            "purge-uploads": {"task": "ner.jobs.purge_uploads", "schedule": settings.purge_interval_s},
        },
    )


@signals.celeryd_init.connect
def _queue_transport_options(conf: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
    """A worker consuming the training queue (``ner trainer``) uses that queue's broker options."""
    queues = (options or {}).get("queues") or []
    names = queues.split(",") if isinstance(queues, str) else list(queues)
    if conf is not None and names == [TRAINING_QUEUE]:
        conf.broker_transport_options = transport_options(get_settings(), TRAINING_QUEUE)


def make_celery() -> Celery:
    """Build the app; job and run state lives in the database, so there is no result backend.

    Tasks are registered by the deployables that run them (``worker.tasks``, ``trainer.tasks``,
    imported by ``ner worker`` and ``ner trainer``); everyone else sends them by name.
    """
    app = Celery("ner")
    configure(app, get_settings())
    return app


celery_app = make_celery()

# Request ids in task headers, JSON worker logs and worker metrics (signal handlers).
import shared.core.celery_signals  # noqa: E402, F401
