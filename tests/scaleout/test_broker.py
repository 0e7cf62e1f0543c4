"""RabbitMQ as well as Redis: the broker settings, the watchdog's marker and queue depths on both,
against the real RabbitMQ (a vhost of the test's own) and a real redis-server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis as redis_lib
from celery import Celery
from pydantic import ValidationError

from shared.core.celery_app import (
    INFERENCE_QUEUE,
    TRAINING_QUEUE,
    amqp_lost_its_data,
    configure,
    forget_amqp_marker,
    queue_depths,
    transport_options,
)
from shared.core.config import Settings
from shared.jobs import maintenance
from tests.scaleout.hosts import rabbitmq_unavailable, rabbitmq_vhost
from tests.support.services import RedisServer


@pytest.fixture
def amqp_url() -> Iterator[str]:
    reason = rabbitmq_unavailable()
    if reason:
        pytest.skip(reason)
    with rabbitmq_vhost() as vhost:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def _app(settings: Settings) -> Celery:
    app = Celery(f"ner-test-{uuid.uuid4().hex[:6]}")
    configure(app, settings)
    return app


def test_the_broker_setting_is_checked_and_amqp_has_no_visibility_timeout(amqp_url: str) -> None:
    settings = Settings(broker_url=amqp_url, redis_url="redis://127.0.0.1:1/0")
    assert settings.celery_broker_url == amqp_url and settings.broker_is_amqp
    assert transport_options(settings) == {} and transport_options(settings, TRAINING_QUEUE) == {}
    assert _app(settings).conf.broker_url == amqp_url
    redis_only = Settings(redis_url="redis://127.0.0.1:1/0")
    assert redis_only.celery_broker_url == "redis://127.0.0.1:1/0" and not redis_only.broker_is_amqp
    assert transport_options(redis_only, TRAINING_QUEUE)["unacked_key"] == "unacked_training"
    with pytest.raises(ValidationError, match=r"must start with amqp://"):
        Settings(broker_url="kafka://broker:9092")


def test_the_amqp_marker_says_when_rabbitmq_lost_its_queues(amqp_url: str) -> None:
    app = _app(Settings(broker_url=amqp_url))
    assert amqp_lost_its_data(app) is True  # first pass: nothing known yet
    assert amqp_lost_its_data(app) is False  # the durable marker queue is there now
    forget_amqp_marker(app)  # what a broker that lost its data looks like
    assert amqp_lost_its_data(app) is True


def test_queue_depths_on_both_brokers(amqp_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        for settings in (Settings(broker_url=amqp_url), Settings(redis_url=redis.url)):
            app = _app(settings)
            assert queue_depths(app) == {INFERENCE_QUEUE: 0, TRAINING_QUEUE: 0}
            for index in range(3):
                app.send_task("ner.jobs.process_chunk", args=[str(uuid.uuid4()), index])
            assert queue_depths(app)[INFERENCE_QUEUE] == 3, settings.celery_broker_url
    finally:
        redis.stop()


def test_the_redis_marker_lives_in_the_brokers_redis_not_the_notifications_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broker, other = RedisServer(tmp_path / "broker"), RedisServer(tmp_path / "other")
    broker.start()
    other.start()
    try:
        settings = Settings(redis_url=other.url, broker_url=broker.url)
        assert maintenance._broker_lost(settings) is True
        assert maintenance._broker_lost(settings) is False
        assert redis_lib.Redis.from_url(broker.url).exists(maintenance.BROKER_MARKER)
        assert not redis_lib.Redis.from_url(other.url).exists(maintenance.BROKER_MARKER)
    finally:
        broker.stop()
        other.stop()
