"""Wiring the model provider and the micro-batcher into the app's lifespan and routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from gateway.deps import Principal, charge_characters
from gateway.limits import KeyConcurrency
from gateway.metrics import observe_batch_size
from shared.core.config import Settings
from shared.predict.batcher import MicroBatcher
from shared.predict.errors import NotServedHere
from shared.predict.limits import check_texts
from shared.predict.schemas import Entity
from shared.predict.serving import ModelProvider, ServedModel

Batcher = MicroBatcher[ServedModel, list[Entity]]


def predict_with(provider: ModelProvider) -> Callable[[list[str]], tuple[ServedModel, list[list[Entity]]]]:
    """The batch function: every text of one batch is answered by the same model version."""

    def predict(texts: list[str]) -> tuple[ServedModel, list[list[Entity]]]:
        served = provider.active()
        return served, served.engine.predict(texts)

    return predict


def start(app: FastAPI, settings: Settings) -> None:
    """Begin loading the model in the background and start the batcher (inside the running loop)."""
    app.state.model_provider = app.state.batcher = None
    if not settings.serve_predict:
        return
    provider = ModelProvider(settings)
    provider.start()
    batcher: Batcher = MicroBatcher(
        predict_with(provider),
        max_batch_size=settings.batch_max_size,
        max_wait_ms=settings.batch_max_wait_ms,
        on_batch=observe_batch_size,
    )
    batcher.start()
    app.state.model_provider = provider
    app.state.batcher = batcher


async def stop(app: FastAPI) -> None:
    if app.state.batcher is not None:
        await app.state.batcher.stop()
        app.state.model_provider.stop()


def get_batcher(request: Request) -> Batcher:
    batcher = request.app.state.batcher
    if batcher is None:
        raise NotServedHere(
            "this gateway does not serve /predict (NER_SERVE_PREDICT=false); "
            "send predictions to a gateway that does"
        )
    return batcher


BatcherDep = Annotated[Batcher, Depends(get_batcher)]


async def recognise(
    texts: list[str],
    *,
    batcher: Batcher,
    settings: Settings,
    principal: Principal,
    concurrency: KeyConcurrency,
    field: str | None = None,
) -> tuple[ServedModel, list[list[Entity]]]:
    """What every predict-shaped route does: size checks, the key's character charge and slot, one batch."""
    characters = check_texts(texts, settings=settings, field=field)
    await run_in_threadpool(charge_characters, principal, settings, characters)
    with concurrency.slot(principal.key_id):
        return await batcher.submit(texts)
