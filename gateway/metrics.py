"""The gateway's Prometheus metrics: HTTP traffic, micro-batch sizes, model version, queue depths."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from shared.core.celery_app import (
    INFERENCE_QUEUE,
    RECOVERY_QUEUE,
    SHADOW_QUEUE,
    TRAINING_QUEUE,
    celery_app,
    queue_depths,
)
from shared.core.metrics import multiprocess_enabled
from shared.core.redis import redis_client

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# kombu's Redis transport keeps a queue's prioritised messages in sibling lists named
# "<queue>\x06\x16<priority>"; the depth is the sum of them all.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class GatewayMetrics:
    requests: Counter
    latency: Histogram
    batch_size: Histogram


@lru_cache
def gateway_metrics() -> GatewayMetrics:
    """Created on first use, so a process started by ``ner serve`` counts in the multiprocess folder."""
    multiprocess_enabled()
    return GatewayMetrics(
        requests=Counter(
            "ner_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
        ),
        latency=Histogram(
            "ner_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
        ),
        batch_size=Histogram(
            "ner_predict_batch_size",
            "Texts per model call made by the predict micro-batcher",
            buckets=BATCH_BUCKETS,
        ),
    )


# The labelled children of the two request metrics, per (method, route template, status): looking a
# child up by keyword labels costs more than the increment itself on every request; the set of keys
# is small (route templates, not paths), so this stays small too.
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(*, method: str, route: str, status: int, seconds: float) -> None:
    key = (method, route, status)
    children = _request_children.get(key)
    if children is None:
        metrics = gateway_metrics()
        labels = (method, route, str(status))
        children = _request_children.setdefault(
            key, (metrics.requests.labels(*labels), metrics.latency.labels(*labels))
        )
    children[0].inc()
    children[1].observe(seconds)


def observe_batch_size(size: int) -> None:
    """Called by the micro-batcher once per model call with the number of texts it gathered."""
    gateway_metrics().batch_size.observe(size)


class QueueDepthCollector:
    """``ner_queue_depth{queue}``: messages waiting in each Celery queue, read at scrape time.

    Redis: LLEN of each queue's priority lists, one pipelined round trip; RabbitMQ: the ready count
    of a passive declare (``shared.core.celery_app.queue_depths``).
    """

    def __init__(
        self,
        broker_url: str,
        queues: Iterable[str] = (INFERENCE_QUEUE, RECOVERY_QUEUE, TRAINING_QUEUE, SHADOW_QUEUE),
    ) -> None:
        self.broker_url = broker_url
        self.queues = tuple(queues)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("ner_queue_depth", "Tasks waiting in a Celery queue", labels=["queue"])
        try:
            depths = self._redis_depths() if self.broker_url.startswith("redis") else self._amqp_depths()
        except Exception as exc:
            logger.warning("queue depth not measured, broker unavailable: %s", type(exc).__name__)
            yield family
            return
        for queue in self.queues:
            family.add_metric([queue], depths[queue])
        yield family

    def _redis_depths(self) -> dict[str, int]:
        pipe = redis_client(self.broker_url).pipeline(transaction=False)
        for queue in self.queues:
            for step in _PRIORITY_STEPS:
                pipe.llen(queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}")
        lengths = pipe.execute()
        per_queue = len(_PRIORITY_STEPS)
        return {
            queue: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(self.queues)
        }

    def _amqp_depths(self) -> dict[str, int]:
        return queue_depths(celery_app, self.queues)


class ModelInfoCollector:
    """``ner_model_info{...} 1``: the model this gateway serves, from a callable that describes it."""

    def __init__(self, describe: Callable[[], dict[str, Any] | None]) -> None:
        self._describe = describe  # not "describe": the registry would take it for the collector's own

    def collect(self) -> Iterable[InfoMetricFamily]:
        family = InfoMetricFamily("ner_model", "The model version this gateway serves")
        try:
            info = self._describe()
        except Exception as exc:  # a broken describe must not break the whole scrape
            logger.warning("model info not available: %s", type(exc).__name__)
            info = None
        if info:
            family.add_metric([], {key: "" if value is None else str(value) for key, value in info.items()})
        yield family
