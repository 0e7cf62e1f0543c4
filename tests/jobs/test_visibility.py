"""Visibility timeouts per queue: each from its own time limit, against a real Redis broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, signals
from kombu import Connection

from shared.core.celery_app import (
    INFERENCE_QUEUE,
    TRAINING_QUEUE,
    VISIBILITY_MARGIN_S,
    celery_app,
    transport_options,
)
from shared.core.config import Settings


def test_each_queue_gets_its_own_time_limit_not_the_longest() -> None:
    settings = Settings(task_time_limit_s=3600, training_time_limit_s=6 * 3600)
    inference = transport_options(settings, INFERENCE_QUEUE)
    training = transport_options(settings, TRAINING_QUEUE)
    assert inference["visibility_timeout"] == 3600 + VISIBILITY_MARGIN_S  # was 22,200 s
    assert training["visibility_timeout"] == 6 * 3600 + VISIBILITY_MARGIN_S
    assert training["unacked_key"] != inference.get("unacked_key", "unacked")
    assert celery_app.conf.broker_transport_options["visibility_timeout"] < training["visibility_timeout"]


def test_a_training_worker_switches_to_its_queues_options_at_start() -> None:
    settings = Settings()
    for queues, expected in [
        (TRAINING_QUEUE, transport_options(settings, TRAINING_QUEUE)),
        (INFERENCE_QUEUE, transport_options(settings, INFERENCE_QUEUE)),
    ]:
        app = Celery("visibility-test", set_as_current=False)
        app.conf.broker_transport_options = transport_options(settings, INFERENCE_QUEUE)
        signals.celeryd_init.send(sender="w@test", instance=None, conf=app.conf, options={"queues": queues})
        assert app.conf.broker_transport_options == expected, queues


@pytest.fixture
def queue_name(service_env: dict[str, str]) -> Iterator[str]:
    name = f"visibility-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(service_env["NER_REDIS_URL"]).delete(name)


def test_an_inference_consumers_timeout_never_redelivers_a_training_message(
    service_env: dict[str, str], queue_name: str
) -> None:
    """A running training message is restored only by the training options' own timeout."""
    url = service_env["NER_REDIS_URL"]
    settings = Settings()
    client = redis.Redis.from_url(url)
    with Connection(url, transport_options=transport_options(settings, TRAINING_QUEUE)) as trainer:
        queue = trainer.SimpleQueue(queue_name)
        queue.put({"run": "r1"})
        message = queue.get(timeout=5)  # delivered, not acknowledged: the run is training
        assert message.payload == {"run": "r1"} and client.llen(queue_name) == 0

        # An inference consumer whose (shorter) timeout has long passed: it must not touch it.
        expired_inference = {**transport_options(settings, INFERENCE_QUEUE), "visibility_timeout": 0}
        with Connection(url, transport_options=expired_inference) as other:
            other.default_channel.qos.restore_visible()
        assert client.llen(queue_name) == 0

        # The training queue's own timeout, once passed, does re-deliver it (the check can fail).
        expired_training = {**transport_options(settings, TRAINING_QUEUE), "visibility_timeout": 0}
        with Connection(url, transport_options=expired_training) as same_queue:
            same_queue.default_channel.qos.restore_visible()
        assert client.llen(queue_name) == 1
        message.ack()
        queue.close()
