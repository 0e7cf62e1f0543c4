"""Synchronous entity recognition: one text, or a batch of texts, answered in the request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.deps import Principal, SettingsDep, require_scope
from gateway.limits import KeyConcurrency
from gateway.prediction import BatcherDep, recognise
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
    served, results = await recognise(
        [body.text],
        batcher=batcher,
        settings=settings,
        principal=principal,
        concurrency=concurrency,
        field="text",
    )
    return PredictResponse(entities=results[0], model_version=served.version)


@router.post("/batch", summary="Entities in several texts, one result per text", responses=_ERRORS)
async def predict_batch(
    body: BatchPredictRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: PredictPrincipal,
    concurrency: ConcurrencyDep,
) -> BatchPredictResponse:
    served, results = await recognise(
        body.texts, batcher=batcher, settings=settings, principal=principal, concurrency=concurrency
    )
    return BatchPredictResponse(
        results=[TextEntities(entities=entities) for entities in results], model_version=served.version
    )
