"""Synchronous entity recognition: one text, or a batch of texts, answered in the request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from gateway.deps import Principal, SettingsDep, charge_characters, require_scope
from gateway.limits import KeyConcurrency
from gateway.prediction import BatcherDep
from shared.predict.limits import check_texts
from shared.predict.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
    TextEntities,
)

router = APIRouter(prefix="/predict", tags=["predict"])

PredictPrincipal = Annotated[Principal, Depends(require_scope("predict"))]

_ERRORS = {
    413: {"description": "A text or the batch is over its limit; the message names the limit."},
    422: {"description": "Missing, empty or non-string text, or a body that is not JSON."},
    503: {"description": "No model to serve yet (the message says how to get one) or still loading."},
}


def _concurrency(request: Request, settings: SettingsDep) -> KeyConcurrency:
    state = request.app.state
    if getattr(state, "predict_concurrency", None) is None:
        state.predict_concurrency = KeyConcurrency(settings.predict_max_concurrent_per_key)
    return state.predict_concurrency


ConcurrencyDep = Annotated[KeyConcurrency, Depends(_concurrency)]


@router.post("/", summary="Entities in one text", responses=_ERRORS)
async def predict(
    body: PredictRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: PredictPrincipal,
    concurrency: ConcurrencyDep,
) -> PredictResponse:
    characters = check_texts([body.text], settings=settings, field="text")
    await run_in_threadpool(charge_characters, principal, settings, characters)
    with concurrency.slot(principal.key_id):
        served, results = await batcher.submit([body.text])
    return PredictResponse(entities=results[0], model_version=served.version)


@router.post("/batch", summary="Entities in several texts, one result per text", responses=_ERRORS)
async def predict_batch(
    body: BatchPredictRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: PredictPrincipal,
    concurrency: ConcurrencyDep,
) -> BatchPredictResponse:
    characters = check_texts(body.texts, settings=settings)
    await run_in_threadpool(charge_characters, principal, settings, characters)
    with concurrency.slot(principal.key_id):
        served, results = await batcher.submit(body.texts)
    return BatchPredictResponse(
        results=[TextEntities(entities=entities) for entities in results], model_version=served.version
    )
