"""The body guard: a request's key is checked before its body is read, and every body has a cap.

FastAPI reads (and parses) a body before it resolves a route's dependencies, so without this an
unauthenticated client could make the gateway hold a body of any size before the 401. Here, as
plain ASGI in front of the routes:

- a request with a body (every route that takes one needs a key) is authenticated from its
  headers first: 401 / 429 without reading a byte of it;
- every route has a byte cap, checked on ``Content-Length`` at once and on the bytes actually
  streamed (chunked bodies), either way 413 naming the cap;
- a JSON body is parsed by orjson (several times faster than ``json``), and one over
  ``PARSE_OFF_LOOP_BYTES`` in a worker thread, so a large body does not stall every other request.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.deps import authenticate_async, presented_key
from shared.core.config import Settings, get_settings
from shared.core.errors import ServiceError

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
_FRAMING = 1 << 20  # JSON punctuation, multipart boundaries and part headers around the payload
# JSON may escape each character of a text as \uXXXX (six bytes; a pair for astral characters).
_JSON_BYTES_PER_CHAR = 12
# Bodies above this many bytes are parsed in a worker thread (orjson reads ~1 GB/s of text here:
# 64 KB is well under a millisecond inline; a 12 MB batch would hold the event loop ~10 ms).
PARSE_OFF_LOOP_BYTES = 64 * 1024
_LONG_DIGITS = re.compile(rb"\d{19,}")  # a number that may not fit 64 bits (or digits in a text)


def parse_json(body: bytes) -> Any:
    """``json.loads``, by orjson where it can: the same values for everything both accept.

    orjson refuses what the standard parser takes (lone surrogates like "\\ud800", NaN) and reads
    integers over 64 bits as floats; those bodies go to ``json.loads``, so the routes see exactly
    what they did before (and answer those cases with the same 4xx).
    """
    if _LONG_DIGITS.search(body):
        return json.loads(body)  # orjson would read an integer past 64 bits as a float
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


async def _request_json(self: Request) -> Any:
    """Starlette's ``Request.json``, parsed by ``parse_json``; large bodies off the event loop."""
    if not hasattr(self, "_json"):
        body = await self.body()
        if len(body) > PARSE_OFF_LOOP_BYTES:
            self._json = await anyio.to_thread.run_sync(parse_json, body)
        else:
            self._json = parse_json(body)
    return self._json


def install_json_parser() -> None:
    """Make every route's JSON body go through ``_request_json``.

    FastAPI parses a route's body with ``Request.json`` on a ``Request`` it creates itself, before
    the handler runs: replacing that method is the one place a middleware can change how bodies
    are parsed for every router at once. Idempotent.
    """
    Request.json = _request_json  # type: ignore[method-assign]


def body_cap(method: str, path: str, content_type: str, settings: Settings) -> tuple[int, str]:
    """The most bytes a body of this route may have, and the setting that sets it."""
    if method == "POST" and path.rstrip("/") in ("/predict", "/redact"):  # one text each
        return settings.predict_max_chars * _JSON_BYTES_PER_CHAR + _FRAMING, "NER_PREDICT_MAX_CHARS"
    if method == "POST" and (path == "/predict/batch" or _is_predict_interop(path)):
        most = settings.predict_max_chars * settings.predict_batch_max_texts
        chars = min(settings.predict_batch_max_chars, most)
        return chars * _JSON_BYTES_PER_CHAR + _FRAMING, "NER_PREDICT_BATCH_MAX_CHARS"
    if method == "POST" and path.rstrip("/") == "/jobs":
        if content_type.startswith("multipart/form-data"):
            # A streamed file: up to 4 UTF-8 bytes a character of the job's character limit.
            return settings.job_max_total_chars * 4 + _FRAMING, "NER_JOB_MAX_TOTAL_CHARS"
        return settings.job_json_max_bytes, "NER_JOB_JSON_MAX_BYTES"
    if method == "POST" and path == "/train/uploads":
        return settings.train_upload_max_bytes + _FRAMING, "NER_TRAIN_UPLOAD_MAX_BYTES"
    return settings.body_max_bytes, "NER_BODY_MAX_BYTES"


def _is_predict_interop(path: str) -> bool:
    # The Hugging Face, KServe V2 and Label Studio shapes of predict: batches of texts.
    return path.startswith("/hf") or path.endswith("/infer") or path == "/labelstudio/predict"


def _has_body(method: str, headers: Headers) -> bool:
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length")
    return method not in _BODYLESS or (length is not None and length.strip() not in ("", "0"))


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of the body is never read: the connection cannot be reused.
        (b"connection", b"close"),
        *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyGuardMiddleware:
    """Authenticate API requests that carry a body before reading it; cap every body (413)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        install_json_parser()  # the bodies this guard lets through are parsed off the loop when large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        method, path = scope["method"], scope.get("path", "")
        headers = Headers(scope=scope)
        if not _has_body(method, headers):
            await self.app(scope, receive, send)
            return
        # Every route that takes a body needs a key; a GET's stray body is only capped.
        if settings.auth == "on" and method not in _BODYLESS:
            client = scope.get("client")
            try:
                # On the loop for a key verified a moment ago; a thread only for the others.
                principal = await authenticate_async(
                    presented_key(headers), address=client[0] if client else None, settings=settings
                )
            except ServiceError as exc:
                await _answer(send, exc.status_code, str(exc), exc.headers)
                return
            scope.setdefault("state", {})["principal"] = principal
        cap, setting = body_cap(method, path, headers.get("content-type", "").lower(), settings)
        message = f"the request body is larger than {cap:,} bytes ({setting})"
        declared = headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > cap:
            await _answer(send, 413, message)
            return
        await self._capped(scope, receive, send, cap, message)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, cap: int, message: str) -> None:
        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > cap:
                    # The route sees a disconnected client and stops; the caller gets the 413.
                    over = True
                    return {"type": "http.disconnect"}
            return incoming

        async def guarded_send(outgoing: Message) -> None:
            nonlocal started
            if over and not started:
                return  # whatever the route answers to the cut-off body, the caller gets 413
            if outgoing["type"] == "http.response.start":
                started = True
            await send(outgoing)

        error: BaseException | None = None
        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception as exc:
            error = exc
        if over and not started:
            await _answer(send, 413, message)
            return
        if error is not None:
            raise error
