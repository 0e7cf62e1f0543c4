"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text

from gateway.deps import SessionDep, SettingsDep, authenticate, presented_key
from shared.core.celery_app import celery_app
from shared.core.config import Settings
from shared.core.errors import ServiceError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _is_admin(request: Request, settings: Settings) -> bool:
    """Whether the caller presented an admin key (auth off: everyone is); a bad key is no key."""
    if settings.auth == "off":
        return True
    presented = presented_key(request.headers)
    if not presented:
        return False
    client = request.client.host if request.client else None
    try:
        return authenticate(presented, address=client, settings=settings).is_admin
    except ServiceError:
        return False


def _amqp_check() -> str:
    """``ok`` when the RabbitMQ broker accepts a connection within a second."""
    try:
        with celery_app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=1)
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


@router.get(
    "/readyz",
    summary="Model loaded, database and broker reachable",
    description="Without an admin key: ready or not, and the names of the failing components only.",
)
def readyz(
    request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready; say which
        checks["database"] = f"error: {type(exc).__name__}"
    # Redis: rate limits and notifications (and the broker, unless NER_BROKER_URL names RabbitMQ).
    redis_check = "redis" if settings.celery_broker_url != settings.redis_url else "broker"
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1).ping()
        checks[redis_check] = "ok"
    except (redis.RedisError, OSError) as exc:
        checks[redis_check] = f"error: {type(exc).__name__}"
    if redis_check == "redis":
        checks["broker"] = _amqp_check()
    provider = getattr(request.app.state, "model_provider", None)
    if provider is not None:
        checks["model"] = provider.status()
    elif settings.serve_predict:
        checks["model"] = "not started"
    # "degraded: ..." (the active version does not load; the last good one answers) is still ready:
    # taking every gateway out of service would stop the answers too. It is reported, not hidden.
    ready = all(value == "ok" or value.startswith("degraded:") for value in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    answer: dict[str, Any] = {"status": "ready" if ready else "not ready"}
    if _is_admin(request, settings):
        answer["checks"] = checks  # the model's state can name folders and loader errors
        if provider is not None and (served := provider.describe()) is not None:
            # Version, device and the precision it runs in (not the folder: /models names it).
            answer["model"] = {key: value for key, value in served.items() if key != "ref"}
    else:
        answer["failing"] = [name for name, value in checks.items() if value != "ok"]
    return answer
