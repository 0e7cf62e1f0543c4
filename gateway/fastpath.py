"""``POST /predict/`` answered without FastAPI's per-request machinery, when the request is plain.

Under load a predict request costs the event loop about 0.35 ms, and a third of that was FastAPI and
Starlette around the route (dependency solving alone 14%, then routing, the exception and exit-stack
layers; docs/benchmarks.md#predict), while the model waits for the loop between micro-batches. This
layer (innermost of the gateway's own middleware: after the request id, metrics, CORS and the body
guard's key check and byte cap) answers a well-formed request to the route in one function with
the route's own parts: the same JSON parser, request model, scope check and rate-limit charge,
``recognise``, options and response model.

Anything else goes to the FastAPI route unchanged, the body it read handed back as it came: a body
that does not parse or validate (so every 422 is FastAPI's), another content type, a large body
(parsed off the loop there), a gateway that does not serve predictions. A domain error answers as
the app's handler for it would. The route stays what the OpenAPI document describes.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.deps import admit
from gateway.errors import service_error
from gateway.guard import PARSE_OFF_LOOP_BYTES, parse_json
from gateway.prediction import key_concurrency
from gateway.routers import predict as predict_routes
from shared.core.config import get_settings
from shared.core.errors import ServiceError
from shared.core.tables import ApiKeyScope
from shared.predict.schemas import PredictRequest

PATH = "/predict/"
_ROUTE = next(route for route in predict_routes.router.routes if getattr(route, "path", None) == PATH)
_JSON = b"application/json"


class PredictFastPath:
    """Answers plain ``POST /predict/`` requests itself; passes every other request on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_predict_json(scope):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        request = _plain_request(body) if body is not None else None
        app = scope["app"]
        if request is None or getattr(app.state, "batcher", None) is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = _ROUTE  # as the router would set it: the metrics label requests by it
        try:
            answer = await _predict(scope, request)
        except ServiceError as exc:
            await (await service_error(Request(scope), exc))(scope, receive, send)  # the app's handler
            return
        await send({"type": "http.response.start", "status": 200, "headers": _headers(len(answer))})
        await send({"type": "http.response.body", "body": answer})


async def _predict(scope: Scope, request: PredictRequest) -> bytes:
    """The route's function, given what its dependencies would have resolved."""
    settings = get_settings()
    app = scope["app"]
    principal = await admit(scope, presented=None, wanted=ApiKeyScope.predict, limited=True)
    concurrency = key_concurrency(app, settings)
    response = await predict_routes.predict(request, app.state.batcher, settings, principal, concurrency)
    return response.model_dump_json().encode()


def _is_predict_json(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == _JSON
    return False


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages read, and the body they hold (None: the client went away, or the guard cut it off)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _plain_request(body: bytes) -> PredictRequest | None:
    """The request as the route would validate it, or None where the route should answer."""
    if len(body) > PARSE_OFF_LOOP_BYTES:
        return None
    try:
        return PredictRequest.model_validate(parse_json(body))
    except (ValueError, ValidationError):  # not JSON, or not a valid request: the route's 422
        return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back ``messages``, then reads on."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(length).encode()), (b"content-type", _JSON)]
