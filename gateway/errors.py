"""The one exception handler: every domain error answers with its own status code and message."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.core.errors import ServiceError


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=exc.headers)


def install(app: FastAPI) -> None:
    """Map ``ServiceError`` (jobs, training, registry, predict, keys) to ``{"detail": message}``."""
    app.add_exception_handler(ServiceError, service_error)
