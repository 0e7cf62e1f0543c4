"""The gateway's application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gateway import errors, prediction
from gateway.fastpath import PredictFastPath
from gateway.guard import BodyGuardMiddleware
from gateway.middleware import RequestContextMiddleware
from gateway.openapi import document_errors
from gateway.routers import docs, health, hf, jobs, kserve, labelstudio, metrics, models, predict, train, ui
from gateway.routers import job_versions as job_versions_router
from gateway.routers import keys as keys_router
from gateway.routers import redact as redact_router
from gateway.routers import shadow as shadow_router
from shared.core.config import get_settings
from shared.core.logging import configure_logging
from shared.registry import seed


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    seed.seed_registry(settings=get_settings())  # an empty registry gets the shipped model as v1
    # The model loads in a background thread: the app answers /healthz (and 503s) meanwhile.
    prediction.start(app, get_settings())
    yield
    await prediction.stop(app)


def create_app() -> FastAPI:
    """Build the FastAPI app with every router; settings are validated here, loudly."""
    settings = get_settings()
    configure_logging(component="gateway", level=settings.log_level, fmt=settings.log_format)
    app = FastAPI(
        title="NER service",
        summary="Named-entity recognition: synchronous predict, bulk jobs, retraining, model registry.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by routers/docs.py from local assets
        redoc_url=None,
    )
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(redact_router.router)  # POST /redact: the text with its entities replaced
    app.include_router(jobs.router)
    app.include_router(job_versions_router.router)  # POST /jobs/{id}/rerun, GET /jobs/{a}/diff/{b}
    app.include_router(train.router)
    app.include_router(models.router)
    app.include_router(shadow_router.router)  # /models/{v}/shadow: shadow traffic
    app.include_router(keys_router.router)  # GET /keys/me: the calling key's name and scopes
    app.include_router(metrics.router)
    app.include_router(hf.router)  # the Hugging Face Inference API shape
    app.include_router(kserve.router)  # Open Inference Protocol (KServe V2)
    app.include_router(labelstudio.router)  # Label Studio's ML backend
    app.include_router(docs.router)  # /docs and /redoc, offline
    app.include_router(ui.router)  # the web UI at / and /static: open without a key
    # Plain POST /predict/ requests answered past FastAPI's per-request layers (innermost: after
    # the body guard, the request id and the metrics).
    app.add_middleware(PredictFastPath)
    # The key before the body, and a byte cap on every body.
    app.add_middleware(BodyGuardMiddleware)
    if settings.cors_origins:  # empty by default: no cross-origin caller is allowed
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "Location", "Idempotent-Replayed"],
        )
    # Request id, access log and HTTP metrics for every request (added last: outermost).
    app.add_middleware(RequestContextMiddleware)
    errors.install(app)  # every domain error answers with its own status code
    document_errors(app)  # 400/401/403/422/429 as they really are, in the OpenAPI document
    return app
