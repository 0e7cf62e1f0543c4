"""``/metrics``: Prometheus text exposition (a ``metrics`` or admin key, sent as a bearer token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.deps import SettingsDep, require_scope
from gateway.metrics import ModelInfoCollector, QueueDepthCollector
from shared.core.metrics import exposition_registry

router = APIRouter(tags=["operations"])


def _describe_model(request: Request) -> dict[str, Any] | None:
    """The model this gateway serves (version, ref, device, precision); None until one is loaded."""
    provider = getattr(request.app.state, "model_provider", None)
    info = provider.describe() if provider is not None else None
    if not info:
        return None
    return {**info, "source": "NER_MODEL" if info.get("version") is None else "registry"}


@router.get(
    "/metrics",
    summary="Prometheus metrics of the gateway (and, on one machine, of its workers)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    dependencies=[Depends(require_scope("metrics"))],
)
def metrics(request: Request, settings: SettingsDep) -> Response:
    scrape = exposition_registry(
        [
            QueueDepthCollector(settings.celery_broker_url),
            ModelInfoCollector(lambda: _describe_model(request)),
        ]
    )
    return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)
