"""Celery signal handlers: request ids into and out of task messages, JSON logs and worker metrics.

Imported by ``shared.core.celery_app``, so publishers (the gateway) and workers both connect them.
"""

from __future__ import annotations

import time
from contextvars import Token
from typing import Any

from celery import signals

from shared.core.config import get_settings
from shared.core.logging import configure_logging, request_id_var, task_var

# The message header that carries the id of the HTTP request that caused a task.
REQUEST_ID_HEADER = "ner_request_id"

_worker_name = "worker"
# task id -> what task_postrun must undo and measure.
_running: dict[str, tuple[Token[str | None], Token[tuple[str, str] | None], float]] = {}


@signals.before_task_publish.connect
def _add_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Stamp the current request id on every task published while serving a request (or a task)."""
    request_id = request_id_var.get()
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


@signals.celeryd_init.connect
def _remember_worker_name(sender: str | None = None, **_: Any) -> None:
    global _worker_name
    if sender:
        _worker_name = str(sender).split("@", 1)[0]  # "inference" or "training"


@signals.setup_logging.connect
def _json_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Workers log like the gateway (one JSON object per line), instead of Celery's own format."""
    settings = get_settings()
    configure_logging(component=_worker_name, level=loglevel or settings.log_level, fmt=settings.log_format)


@signals.worker_init.connect
def _worker_metrics(**_: Any) -> None:
    """Count in the multiprocess folder (before the pool forks) and serve it when a port is set."""
    from shared.core import metrics

    settings = get_settings()
    metrics.enable_multiprocess(settings)
    metrics.serve_metrics_port(settings)


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request_id = task.request.get(REQUEST_ID_HEADER) if task is not None else None
    if request_id is None and task is not None and task.request.headers:
        request_id = task.request.headers.get(REQUEST_ID_HEADER)
    name = getattr(task, "name", "?")
    _running[str(task_id)] = (
        request_id_var.set(request_id),
        task_var.set((name, str(task_id))),
        time.perf_counter(),
    )


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    entry = _running.pop(str(task_id), None)
    if entry is None:
        return
    request_token, task_token, started = entry
    from shared.core.metrics import worker_metrics

    name = getattr(task, "name", "?")
    metrics = worker_metrics()
    metrics.tasks.labels(task=name, outcome=(state or "unknown").lower()).inc()
    metrics.task_seconds.labels(task=name).observe(time.perf_counter() - started)
    # Reset, so the next task of this worker process starts without this one's ids.
    try:
        task_var.reset(task_token)
        request_id_var.reset(request_token)
    except ValueError:  # set in another context (a pool that switched threads): clear instead
        task_var.set(None)
        request_id_var.set(None)


@signals.task_failure.connect
def _task_failed(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    from shared.core.metrics import worker_metrics

    worker_metrics().failures.labels(
        task=getattr(sender, "name", "?"), exception=type(exception).__name__ if exception else "?"
    ).inc()
