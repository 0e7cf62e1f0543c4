"""The gateway's Prometheus metrics: HTTP traffic, micro-batch sizes, model version, queue depths."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from shared.core.celery_app import INFERENCE_QUEUE, TRAINING_QUEUE
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


def observe_request(*, method: str, route: str, status: int, seconds: float) -> None:
    metrics = gateway_metrics()
    metrics.requests.labels(method=method, route=route, status=str(status)).inc()
    metrics.latency.labels(method=method, route=route, status=str(status)).observe(seconds)


def observe_batch_size(size: int) -> None:
    """Called by the micro-batcher once per model call with the number of texts it gathered."""
    gateway_metrics().batch_size.observe(size)


class QueueDepthCollector:
    """``ner_queue_depth{queue}``: messages waiting in each Celery queue (Redis LLEN at scrape time)."""

    def __init__(self, redis_url: str, queues: Iterable[str] = (INFERENCE_QUEUE, TRAINING_QUEUE)) -> None:
        self.redis_url = redis_url
        self.queues = tuple(queues)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("ner_queue_depth", "Tasks waiting in a Celery queue", labels=["queue"])
        try:
            pipe = redis_client(self.redis_url).pipeline(transaction=False)
            for queue in self.queues:
                for step in _PRIORITY_STEPS:
                    pipe.llen(queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}")
            lengths = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            # No sample rather than a wrong zero; the scrape itself still succeeds.
            logger.warning("queue depth not measured, Redis unavailable: %s", type(exc).__name__)
            yield family
            return
        per_queue = len(_PRIORITY_STEPS)
        for index, queue in enumerate(self.queues):
            family.add_metric([queue], sum(lengths[index * per_queue : (index + 1) * per_queue]))
        yield family


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
