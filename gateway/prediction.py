"""Wiring the model provider and the micro-batcher into the app's lifespan and routes."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Sequence
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from gateway.deps import Principal, charge_characters_async
from gateway.limits import KeyConcurrency
from gateway.metrics import observe_batch_size
from shared.core.config import Settings
from shared.predict.batcher import MicroBatcher
from shared.predict.errors import ModelNotReady, NoModelAvailable, NotServedHere
from shared.predict.limits import check_texts
from shared.predict.options import OutputOptions, check_labels, check_types, entity_types
from shared.predict.schemas import Entity
from shared.predict.serving import ModelProvider, ServedModel
from shared.shadow import sampler as shadow_sampler

logger = logging.getLogger(__name__)

# How long the gateway waits for its first model before freezing the heap without it.
_FREEZE_WAIT_S = 600.0


class Batcher(MicroBatcher[ServedModel, list[Entity]]):
    """The micro-batcher in front of the served models; requests merge per model version."""

    def __init__(self, provider: ModelProvider, settings: Settings) -> None:
        super().__init__(
            predict_with(provider),
            max_batch_size=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            on_batch=observe_batch_size,
        )
        self.provider = provider


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
    batcher = Batcher(provider, settings)
    batcher.start()
    app.state.model_provider = provider
    app.state.batcher = batcher
    app.state.heap_freezer = asyncio.get_running_loop().create_task(_freeze_heap_when_loaded(provider))


async def _freeze_heap_when_loaded(provider: ModelProvider) -> None:
    """Once the first model is loaded, move every object alive then out of the cyclic collector.

    torch and transformers leave millions of long-lived objects, and each full collection walks
    them all with the GIL held: under load (one every few seconds) that stopped the event loop and
    the engine for 1-2 s at a time on a busy 2-core machine, the p99 of every request. Frozen
    objects are still freed by reference counting; new ones are collected as before.
    """
    waited = 0.0
    while waited < _FREEZE_WAIT_S:
        try:
            provider.active()
            break
        except (ModelNotReady, NoModelAvailable):
            await asyncio.sleep(1.0)
            waited += 1.0
    gc.collect()
    gc.freeze()
    logger.info("heap frozen for the cyclic collector: %d objects", gc.get_freeze_count())


async def stop(app: FastAPI) -> None:
    freezer = getattr(app.state, "heap_freezer", None)
    if freezer is not None:
        freezer.cancel()
    if app.state.batcher is not None:
        await app.state.batcher.stop()
        app.state.model_provider.stop()


async def get_batcher(request: Request) -> Batcher:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request for nothing.
    batcher = request.app.state.batcher
    if batcher is None:
        raise NotServedHere(
            "this gateway does not serve /predict (NER_SERVE_PREDICT=false); "
            "send predictions to a gateway that does"
        )
    return batcher


BatcherDep = Annotated[Batcher, Depends(get_batcher)]


def key_concurrency(app: FastAPI, settings: Settings) -> KeyConcurrency:
    """The app's per-key cap on predict requests in flight (made on first use)."""
    state = app.state
    if getattr(state, "predict_concurrency", None) is None:
        state.predict_concurrency = KeyConcurrency(settings.predict_max_concurrent_per_key)
    return state.predict_concurrency


async def choose_model(provider: ModelProvider, model_version: int | None) -> ServedModel:
    """The model that answers: the pinned registry version (loaded in the background if needed,
    404 when it does not exist), else the active one. Awaiting a load never blocks other requests."""
    if model_version is None:
        return provider.active()
    served = provider.loaded(model_version)
    if served is not None:
        return served
    loading = await run_in_threadpool(provider.load_version, model_version)  # a database look-up
    return await asyncio.wrap_future(loading)


async def recognise(
    texts: list[str],
    *,
    batcher: Batcher,
    settings: Settings,
    principal: Principal,
    concurrency: KeyConcurrency,
    field: str | None = None,
    model_version: int | None = None,
    options: OutputOptions | None = None,
    types: Sequence[str] | None = None,
) -> tuple[ServedModel, list[list[Entity]]]:
    """What every predict-shaped route does: size checks, the key's character charge and slot, the
    model (``model_version`` or the active one, whose types ``options`` and ``types`` must name),
    one batch.

    The entities are the model's, unfiltered, at codepoint offsets: routes apply ``options``.
    """
    characters = check_texts(texts, settings=settings, field=field)
    if principal.key_id is not None and characters >= settings.rate_limit_chars_per_token:
        # One asyncio Redis call; most requests owe nothing beyond their admission token.
        await charge_characters_async(principal, settings, characters)
    served = await choose_model(batcher.provider, model_version)
    if options is not None or types is not None:
        known = entity_types(served.engine.labels)
        if options is not None:
            check_labels(options, known=known)
        if types is not None:
            check_types("types", types, allowed=known)
    with concurrency.slot(principal.key_id):
        answered = await batcher.submit(texts, key=served.key, predict=_answer_with(served))
    # Shadow traffic (issue 15): live texts of the active version only; non-blocking, never raises.
    shadow_sampler.offer(texts, answered[0].version if model_version is None else None)
    return answered


def _answer_with(served: ServedModel) -> Callable[[list[str]], tuple[ServedModel, list[list[Entity]]]]:
    """The batch function of one chosen model: the request is answered by the model it was checked against."""
    return lambda texts: (served, served.engine.predict(texts))
