"""The one Celery app: queues, routes and task defaults for the inference and training workers."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.core.config import Settings, get_settings

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"


def configure(app: Celery, settings: Settings) -> None:
    """Apply ``settings`` to ``app`` (again, when tests point it at another broker)."""
    longest_task_s = max(settings.task_time_limit_s, settings.training_time_limit_s)
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
        # Redis re-delivers an unacknowledged task after the visibility timeout: it must outlast the
        # longest task, or a long training run would be started twice.
        broker_transport_options={"visibility_timeout": longest_task_s + 600},
        broker_connection_retry_on_startup=True,
        # Flower sees every task and worker.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        timezone="UTC",
        # An inference process loads its model in worker_process_init (after the fork, so CUDA
        # starts in the child); Celery's default 4 s to report "up" is far too short for that.
        worker_proc_alive_timeout=300.0,
        # `ner worker --beat`: delete expired jobs; a late message is dropped, the next one comes.
        beat_schedule={
            "purge-expired-jobs": {
                "task": "ner.jobs.purge_expired",
                "schedule": settings.purge_interval_s,
                "options": {"expires": settings.purge_interval_s},
            }
        },
    )


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
