"""Prometheus plumbing shared by gateway and workers, and the workers' own metrics.

Celery's prefork pool and ``ner serve --workers N`` run several processes, so the processes that
``ner`` starts count in prometheus_client's multiprocess mode: every process writes its samples
to files in one folder (``NER_METRICS_DIR``, default ``<state dir>/metrics``) and whoever serves
``/metrics`` adds up the folder. On one machine the gateway's ``/metrics`` therefore shows the
workers' counters too; a worker on another machine serves its own folder on ``NER_METRICS_PORT``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from shared.core.config import Settings

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Files are named after host and pid, not the pid alone: containers sharing a state volume all
# have a pid 1, and two processes must never write the same file.
_HOST = socket.gethostname().replace("_", "-")
_patched = False


def metrics_dir(settings: Settings) -> Path:
    return settings.metrics_dir or settings.state_dir / "metrics"


def _use_multiprocess_values() -> None:
    global _patched
    if not _patched:
        values.ValueClass = values.MultiProcessValue(lambda: f"{_HOST}-{os.getpid()}")
        _patched = True


def prepare_dir(settings: Settings, *, clean: bool = False) -> Path:
    """The multiprocess folder (made if missing); ``clean`` empties it first, for a launcher that
    starts every process using it (``ner up``)."""
    path = Path(os.environ.get(MULTIPROC_ENV) or metrics_dir(settings))
    if clean and path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def enable_multiprocess(settings: Settings) -> Path:
    """Count in the multiprocess folder from now on (children inherit it through the environment)."""
    path = prepare_dir(settings)
    os.environ[MULTIPROC_ENV] = str(path)
    _use_multiprocess_values()
    return path


def multiprocess_enabled() -> bool:
    """Whether this process counts in a multiprocess folder (inherited or enabled here)."""
    if os.environ.get(MULTIPROC_ENV):
        _use_multiprocess_values()  # a child that inherited the folder: name its files the same way
        return True
    return False


class _Forward:
    """Exposes the default registry's metrics through another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable:  # type: ignore[type-arg]
        return self.source.collect()


def exposition_registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry for one scrape: this process's metrics, or the whole folder's in multiprocess mode."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_enabled():
        MultiProcessCollector(registry)
    else:
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


# --- the workers' metrics ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerMetrics:
    tasks: Counter
    task_seconds: Histogram
    failures: Counter
    documents: Counter
    inference_seconds: Histogram


@lru_cache
def worker_metrics() -> WorkerMetrics:
    """Created on first use, after the process chose its mode (a pool child inherits the folder)."""
    multiprocess_enabled()
    return WorkerMetrics(
        tasks=Counter(
            "ner_worker_tasks", "Celery tasks finished, by task name and outcome", ["task", "outcome"]
        ),
        task_seconds=Histogram(
            "ner_worker_task_seconds",
            "Wall time of a Celery task",
            ["task"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600),
        ),
        failures=Counter(
            "ner_worker_task_failures",
            "Celery tasks that raised, by task and exception",
            ["task", "exception"],
        ),
        documents=Counter(
            "ner_worker_documents", "Job documents processed by inference workers, by outcome", ["outcome"]
        ),
        inference_seconds=Histogram(
            "ner_worker_inference_seconds",
            "Seconds spent in the model for one chunk of job documents",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        ),
    )


def record_documents(*, done: int = 0, failed: int = 0) -> None:
    """Count job documents a worker finished (``done``) or gave up on (``failed``)."""
    metrics = worker_metrics()
    if done:
        metrics.documents.labels(outcome="done").inc(done)
    if failed:
        metrics.documents.labels(outcome="failed").inc(failed)


def observe_inference(seconds: float) -> None:
    """Record time spent in the model for one batch of documents."""
    worker_metrics().inference_seconds.observe(seconds)


@contextmanager
def inference_timer() -> Iterator[None]:
    """``with inference_timer(): engine.predict(...)`` records the block's duration."""
    start = time.perf_counter()
    try:
        yield
    finally:
        observe_inference(time.perf_counter() - start)


def instrument_predict(predict: Callable[[Sequence[str]], list[Any]]) -> Callable[[Sequence[str]], list[Any]]:
    """``predict`` that records its model time and counts the documents it finished or failed.

    A failed call with several texts counts nothing: the caller retries those texts one by one
    (see shared/jobs/processing.py), and each of those calls counts.
    """

    def measured(texts: Sequence[str]) -> list[Any]:
        start = time.perf_counter()
        try:
            result = predict(texts)
        except Exception:
            if len(texts) == 1:
                record_documents(failed=1)
            raise
        finally:
            observe_inference(time.perf_counter() - start)
        record_documents(done=len(texts))
        return result

    return measured


def instrument_chunk_task(task: Any) -> Any:
    """A ``ChunkTask`` whose predictors are measured by ``instrument_predict``."""
    load = task.load_predictor
    return replace(task, load_predictor=lambda pinned: instrument_predict(load(pinned)))


def serve_metrics_port(settings: Settings) -> int | None:
    """Serve this machine's metrics folder on ``NER_METRICS_PORT`` (0: off), without a key.

    For a Prometheus inside the network (the gateway's own ``/metrics`` wants an admin key). A
    second process on the same machine finds the port taken and carries on: the one already
    listening serves the same folder. Returns the port when this process serves it.
    """
    if not settings.metrics_port:
        return None
    from prometheus_client import start_http_server

    enable_multiprocess(settings)
    try:
        start_http_server(settings.metrics_port, addr=settings.host, registry=exposition_registry())
    except OSError as exc:
        logger.warning("metrics port %s not served here: %s", settings.metrics_port, exc)
        return None
    logger.info("serving Prometheus metrics on %s:%s", settings.host, settings.metrics_port)
    return settings.metrics_port
