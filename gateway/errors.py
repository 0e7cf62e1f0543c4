"""The exception handlers: every domain error answers with its own status code and message, and
every validation error names the field without echoing what was sent."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from shared.core.errors import ServiceError

MAX_ERRORS = 20  # a body with thousands of bad items gets a short answer
MAX_MESSAGE = 300


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=exc.headers)


def _printable(part: Any) -> str | int:
    # A location names a field or an index; a key the caller made up is cut and made printable.
    if isinstance(part, int):
        return part
    text = str(part)[:100]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _message(msg: str) -> str:
    return msg[:MAX_MESSAGE].encode("utf-8", "backslashreplace").decode("utf-8")


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with each error's location, message and type: never the input (it can be megabytes,
    a lone surrogate or a NaN that JSON cannot carry)."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    detail = [
        {
            "loc": [_printable(part) for part in error.get("loc", ())],
            "msg": _message(str(error.get("msg", "invalid"))),
            "type": str(error.get("type", "value_error")),
        }
        for error in errors[:MAX_ERRORS]
    ]
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        detail.append({"loc": [], "msg": f"{more} more errors", "type": "too_many_errors"})
    return JSONResponse({"detail": detail}, status_code=422)


def install(app: FastAPI) -> None:
    """Map ``ServiceError`` (jobs, training, registry, predict, keys) to ``{"detail": message}``,
    and request validation errors to a 422 that names each field."""
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
