"""Synchronous entity recognition: one text, or a batch of texts, answered in the request."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from gateway.deps import SettingsDep, require_scope
from gateway.prediction import BatcherDep
from shared.predict.limits import check_texts
from shared.predict.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
    TextEntities,
)

router = APIRouter(prefix="/predict", tags=["predict"], dependencies=[Depends(require_scope("predict"))])

_ERRORS = {
    413: {"description": "A text or the batch is over its limit; the message names the limit."},
    422: {"description": "Missing, empty or non-string text, or a body that is not JSON."},
    503: {"description": "No model to serve yet (the message says how to get one) or still loading."},
}


@router.post("/", summary="Entities in one text", responses=_ERRORS)
async def predict(body: PredictRequest, batcher: BatcherDep, settings: SettingsDep) -> PredictResponse:
    check_texts([body.text], settings=settings, field="text")
    served, results = await batcher.submit([body.text])
    return PredictResponse(entities=results[0], model_version=served.version)


@router.post("/batch", summary="Entities in several texts, one result per text", responses=_ERRORS)
async def predict_batch(
    body: BatchPredictRequest, batcher: BatcherDep, settings: SettingsDep
) -> BatchPredictResponse:
    check_texts(body.texts, settings=settings)
    served, results = await batcher.submit(body.texts)
    return BatchPredictResponse(
        results=[TextEntities(entities=entities) for entities in results], model_version=served.version
    )
