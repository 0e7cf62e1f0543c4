"""The one Celery app: queues, routes and task defaults for the inference and training workers."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from kombu import Queue
from kombu.exceptions import OperationalError
from kombu.utils.scheduling import round_robin_cycle

from shared.core.config import Settings, get_settings

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"
SHADOW_QUEUE = "shadow"  # shadow traffic comparisons (issue 15), consumed by `ner worker`
# Chunks sent again after their worker or pool child died (issue 21): `ner worker` consumes this
# queue first, so a recovered chunk does not wait behind the whole backlog of the inference queue.
RECOVERY_QUEUE = "inference.recovery"
# The queues `ner worker` consumes (on Redis the recovery queue is always polled first: transport_options).
WORKER_QUEUES = (RECOVERY_QUEUE, INFERENCE_QUEUE, SHADOW_QUEUE)


# Redis re-delivers a message nobody acknowledged after the visibility timeout (a worker whose main
# process was killed). It must outlast the queue's longest task, or a long task runs twice; and no
# more, or a lost chunk waits for the training limit (6 h) instead of its own (1 h).
VISIBILITY_MARGIN_S = 300


def transport_options(settings: Settings, queue: str = INFERENCE_QUEUE) -> dict[str, Any]:
    """The broker options of a process consuming ``queue``: that queue's own visibility timeout.

    The Redis transport keeps unacknowledged messages in one hash per key name and every consumer
    restores what is older than *its* timeout, so the training queue keeps its own keys: an
    inference worker's shorter timeout never re-delivers a run that is still training.

    RabbitMQ (``amqp://``) needs none of this: it re-delivers an unacknowledged message when its
    consumer's connection closes (a killed worker), never on a timer, so a long run is not sent twice.
    """
    if settings.broker_is_amqp:
        return {}
    if queue == TRAINING_QUEUE:
        return {
            "visibility_timeout": settings.training_time_limit_s + VISIBILITY_MARGIN_S,
            "unacked_key": "unacked_training",
            "unacked_index_key": "unacked_index_training",
            "unacked_mutex_key": "unacked_mutex_training",
        }
    # Kombu's default key names: every process that is not the trainer (gateway, beat, Flower,
    # inference workers) sees only inference messages there, under the inference timeout.
    # The order a worker polls its queues in: the recovery queue always first, the others in turn
    # as before. RabbitMQ has no order between queues: there a recovered chunk is among the next
    # deliveries (each free prefetch slot goes to one of the queues at random), not behind the backlog.
    return {
        "visibility_timeout": settings.task_time_limit_s + VISIBILITY_MARGIN_S,
        "queue_order_strategy": f"{__name__}:RecoveryFirstCycle",
    }


class RecoveryFirstCycle(round_robin_cycle):
    """Kombu's Redis queue order: the recovery queue before all others, which take turns."""

    def consume(self, n: int) -> list[str]:
        return sorted(super().consume(n), key=lambda queue: queue != RECOVERY_QUEUE)  # stable


def configure(app: Celery, settings: Settings) -> None:
    """Apply ``settings`` to ``app`` (again, when tests point it at another broker)."""
    if app.conf.broker_url not in (None, settings.celery_broker_url):
        _drop_connection_pools(app)
    app.conf.update(
        broker_url=settings.celery_broker_url,  # NER_BROKER_URL (amqp:// or redis://), else NER_REDIS_URL
        task_queues=[
            Queue(INFERENCE_QUEUE),
            Queue(TRAINING_QUEUE),
            Queue(SHADOW_QUEUE),
            Queue(RECOVERY_QUEUE),
        ],
        task_default_queue=INFERENCE_QUEUE,
        task_routes={
            "ner.jobs.*": {"queue": INFERENCE_QUEUE},
            "ner.train.*": {"queue": TRAINING_QUEUE},
            "ner.registry.*": {"queue": TRAINING_QUEUE},  # gate scores of imported versions
            "ner.shadow.*": {"queue": SHADOW_QUEUE},
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
        # NER_WORKER_MAX_MEMORY_MB (KiB here): a pool child past it is replaced after its task.
        worker_max_memory_per_child=settings.worker_max_memory_mb * 1024 or None,
        # `ner worker --beat`: delete expired jobs; a late message is dropped, the next one comes.
        beat_schedule={
            # Disagreement samples of shadow traffic past the job retention (worker/shadow.py).
            "purge-shadow-samples": {
                "task": "ner.shadow.purge_samples",
                "schedule": settings.purge_interval_s,
                "options": {"expires": settings.purge_interval_s},
            },
            "purge-expired-jobs": {
                "task": "ner.jobs.purge_expired",
                "schedule": settings.purge_interval_s,
                "options": {"expires": settings.purge_interval_s},
            },
            "purge-uploads": {"task": "ner.jobs.purge_uploads", "schedule": settings.purge_interval_s},
        },
    )


def _drop_connection_pools(app: Celery) -> None:
    """Forget the app's pooled connections, as Celery does after a fork: the next publish connects
    to the broker now configured, not the one the pool was made for. The pools themselves are not
    closed: kombu keeps them in a process-wide registry by broker URL, and a closed one would be
    handed out again when the app is pointed back at that broker."""
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@signals.celeryd_init.connect
def _queue_transport_options(conf: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
    """A worker consuming the training queue (``ner trainer``) uses that queue's broker options."""
    queues = (options or {}).get("queues") or []
    names = queues.split(",") if isinstance(queues, str) else list(queues)
    if conf is not None and names == [TRAINING_QUEUE]:
        conf.broker_transport_options = transport_options(get_settings(), TRAINING_QUEUE)


# Marker of the watchdog on RabbitMQ: a durable, empty queue. It survives a broker restart exactly
# when the broker kept its durable queues (and with them the queued chunks' persistent messages).
AMQP_MARKER_QUEUE = "ner.watchdog.marker"


def amqp_lost_its_data(app: Celery) -> bool:
    """True when the marker queue is missing (RabbitMQ lost its data, or the first pass): declares it.

    Connection errors are raised as kombu's OperationalError, like a failed publish.
    """
    with app.connection_for_write() as connection:
        try:
            channel = connection.channel()
            try:
                channel.queue_declare(queue=AMQP_MARKER_QUEUE, passive=True)
                return False
            except connection.channel_errors:
                # A failed passive declare closes the channel: declare it on a fresh one.
                channel = connection.channel()
                channel.queue_declare(queue=AMQP_MARKER_QUEUE, durable=True, auto_delete=False)
                return True
            finally:
                channel.close()
        except connection.connection_errors as exc:
            raise OperationalError(f"broker unavailable: {type(exc).__name__}") from exc


def forget_amqp_marker(app: Celery) -> None:
    """Delete the marker queue, so the next pass sends the queued chunks again."""
    with app.connection_for_write() as connection:
        try:
            channel = connection.channel()
            try:
                channel.queue_delete(queue=AMQP_MARKER_QUEUE)
            finally:
                channel.close()
        except connection.connection_errors as exc:
            raise OperationalError(f"broker unavailable: {type(exc).__name__}") from exc


def queue_depths(app: Celery, queues: tuple[str, ...] = (INFERENCE_QUEUE, TRAINING_QUEUE)) -> dict[str, int]:
    """Messages waiting in each queue, on either broker (what KEDA scales on); raises on broker errors.

    Redis: the list length; RabbitMQ: the ready-message count of a passive declare (unacknowledged
    messages, i.e. running tasks, are not counted on either).
    """
    depths: dict[str, int] = {}
    with app.connection_for_read() as connection:
        channel = connection.channel()
        try:
            for queue in queues:
                try:
                    depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
                except connection.channel_errors:
                    depths[queue] = 0  # never declared: nobody sent to it yet
                    channel = connection.channel()
        finally:
            channel.close()
    return depths


# Kombu's Redis transport keeps each delivered, unacknowledged message in this hash (and its
# delivery time in the sorted set) until it is acknowledged, or restored after the visibility timeout.
REDIS_UNACKED_KEY = "unacked"
REDIS_UNACKED_INDEX_KEY = "unacked_index"


def stale_unacked_redis(
    settings: Settings, *, task: str, older_than_s: float
) -> list[tuple[bytes, list[Any]]]:
    """(delivery tag, args) of ``task`` messages of the inference queue that a Redis broker delivered
    more than ``older_than_s`` ago and nobody acknowledged: their worker died, or is still busy.

    A worker whose main process was killed never acknowledges them, and Redis gives them back only
    after the visibility timeout (an hour): the watchdog decides from the database what to re-send.
    """
    import base64
    import json
    import time

    import redis

    client = redis.Redis.from_url(settings.celery_broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        tags = client.zrangebyscore(REDIS_UNACKED_INDEX_KEY, 0, time.time() - older_than_s, start=0, num=500)
        found = []
        for tag, raw in zip(tags, client.hmget(REDIS_UNACKED_KEY, tags) if tags else [], strict=True):
            try:
                payload = json.loads(raw)[0]
                if payload["headers"]["task"] != task:
                    continue
                body = payload["body"]
                if payload.get("properties", {}).get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                args = json.loads(body)[0]
            except (TypeError, ValueError, KeyError, IndexError):
                continue  # not a message of ours (or already acknowledged): left alone
            found.append((tag, list(args)))
        return found
    finally:
        client.close()


def forget_unacked_redis(settings: Settings, tag: bytes) -> None:
    """Drop one unacknowledged message (its task was sent again): it is not restored an hour later."""
    import redis

    client = redis.Redis.from_url(settings.celery_broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.pipeline().hdel(REDIS_UNACKED_KEY, tag).zrem(REDIS_UNACKED_INDEX_KEY, tag).execute()
    finally:
        client.close()


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
