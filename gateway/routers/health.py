"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text

from gateway.deps import SessionDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Model loaded, database and broker reachable")
def readyz(
    request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready; say which
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1).ping()
        checks["broker"] = "ok"
    except (redis.RedisError, OSError) as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    provider = getattr(request.app.state, "model_provider", None)
    if provider is not None:
        checks["model"] = provider.status()
    elif settings.serve_predict:
        checks["model"] = "not started"
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ready" if ready else "not ready", "checks": checks}
