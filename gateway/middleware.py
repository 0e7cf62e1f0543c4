"""Per-request plumbing: request id, access log, Prometheus counters and a last-resort 500.

A plain ASGI middleware (not ``BaseHTTPMiddleware``): it adds no task per request and keeps the
request id in a contextvar that route handlers, threadpool calls and Celery publishes all see.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import observe_request
from shared.core.logging import request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
# Every answer: the UI and /docs load scripts, styles and data from this origin only (no inline
# script), no page may frame them, and no type is sniffed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_RAW_SECURITY_HEADERS = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
# A caller's id is kept only when it is short and plain (it lands in logs, headers and a
# String(100) column); anything else is replaced by a fresh one.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,100}")

access_logger = logging.getLogger("ner.access")
logger = logging.getLogger(__name__)


def _caller_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            try:
                candidate = value.decode("ascii")
            except UnicodeDecodeError:
                return None
            return candidate if _VALID_REQUEST_ID.fullmatch(candidate) else None
    return None


def _route_label(scope: Scope) -> str:
    # The route's template ("/jobs/{job_id}"), never the raw path: labels must stay few.
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    """Gives every request an id (or keeps a valid ``X-Request-ID``), logs and counts it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _caller_request_id(scope) or uuid.uuid4().hex
        # Routes that read the header (to store it with a job, say) see the checked id, never the raw one.
        scope["headers"] = [
            *(item for item in scope.get("headers", ()) if item[0] != b"x-request-id"),
            (b"x-request-id", request_id.encode()),
        ]
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_code = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_code = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                # One pass over the response's own headers instead of a search per security header.
                present = {name for name, _ in headers.raw}
                headers.raw.extend(item for item in _RAW_SECURITY_HEADERS if item[0] not in present)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], _route_label(scope))
            if response_started:
                raise
            await _internal_error(send, request_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(scope)
            observe_request(method=scope["method"], route=route, status=status_code, seconds=elapsed)
            if access_logger.isEnabledFor(logging.INFO):  # no record built where nobody reads it
                principal = scope.get("state", {}).get("principal")
                access_logger.info(
                    "%s %s %s",
                    scope["method"],
                    scope.get("path", ""),
                    status_code,
                    extra={
                        "method": scope["method"],
                        "path": scope.get("path", ""),
                        "route": route,
                        "status": status_code,
                        "duration_ms": round(elapsed * 1000, 2),
                        "key": getattr(principal, "prefix", None),
                    },
                )
            request_id_var.reset(token)


async def _internal_error(send: Send, request_id: str) -> None:
    body = json.dumps({"detail": "internal server error", "request_id": request_id}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                *_RAW_SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
