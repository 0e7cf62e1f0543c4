"""JSON logs for the gateway and the workers, stamped with the request id that caused them."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

# The id of the HTTP request (or of the request that queued the running Celery task).
request_id_var: ContextVar[str | None] = ContextVar("ner_request_id", default=None)
# The running Celery task, so worker log lines say which task wrote them.
task_var: ContextVar[tuple[str, str] | None] = ContextVar("ner_task", default=None)

# A full API key (see shared/keys/service.py); whatever logs one by mistake, only its prefix is written.
_API_KEY = re.compile(r"\b(ner_[0-9a-f]{8})_[A-Za-z0-9_-]{16,}")

# LogRecord attributes that are not "extra" fields a caller passed.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName"}
)


def get_request_id() -> str | None:
    """The current request's id (None outside a request or a task it caused)."""
    return request_id_var.get()


def redact(text: str) -> str:
    """``text`` with every API key cut down to its non-secret prefix."""
    return _API_KEY.sub(r"\1_[redacted]", text)


def _redacted(value: Any) -> Any:
    # Every field, not only the message: a key sent in a URL path lands in the access log's "path".
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, task and extras."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        task = task_var.get()
        if task is not None:
            entry["task"], entry["task_id"] = task
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in entry and not key.startswith("_"):
                entry[key] = _redacted(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the request id when there is one."""

    def __init__(self, component: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(ctx)s: %(message)s")
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        task = task_var.get()
        parts = [f"request_id={request_id}"] if request_id else []
        if task is not None:
            parts.append(f"task={task[0]}[{task[1]}]")
        record.ctx = f" [{' '.join(parts)}]" if parts else ""
        return redact(super().format(record))


def configure_logging(*, component: str, level: str = "INFO", fmt: Literal["json", "text"] = "json") -> None:
    """Send every logger's records, uvicorn's and Celery's too, through one formatted handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component) if fmt == "json" else TextFormatter(component))
    handler.set_name("ner")
    root = logging.getLogger()
    # Replace only our own handler: others' (pytest's log capture, say) stay.
    for old in [h for h in root.handlers if h.get_name() == "ner"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.task", "celery.redirected"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # The gateway writes its own access line (with request id, route and duration); uvicorn's
    # would repeat it without them.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
