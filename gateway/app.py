"""The gateway's application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.routers import health
from shared.config import get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


def create_app() -> FastAPI:
    """Build the FastAPI app with every router; settings are validated here, loudly."""
    get_settings()
    app = FastAPI(
        title="NER service",
        summary="Named-entity recognition: synchronous predict, bulk jobs, retraining, model registry.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    return app
