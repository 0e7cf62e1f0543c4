"""Synchronous entity recognition: one text, or a batch of texts, answered in the request."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.deps import Principal, SettingsDep, require_scope
from gateway.limits import KeyConcurrency
from gateway.prediction import BatcherDep, key_concurrency, recognise
from shared.predict.options import apply_options
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
    404: {"description": "`model_version` names a version the registry does not have."},
    409: {"description": "`model_version` exists but its files do not load; the message says why."},
    413: {"description": "A text or the batch is over its limit; the message names the limit."},
    422: {
        "description": "Missing, empty or non-string text, a body that is not JSON, an unknown "
        "`offset_encoding`, a type the model does not have, or a score outside [0, 1]; the message "
        "names the field (and the allowed values)."
    },
    503: {"description": "No model to serve yet (the message says how to get one) or still loading."},
}


async def _concurrency(request: Request, settings: SettingsDep) -> KeyConcurrency:
    # async: a plain ``def`` dependency would cost a thread-pool hop per request.
    return key_concurrency(request.app, settings)


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
        model_version=body.model_version,
        options=body,
    )
    return PredictResponse(entities=apply_options(body.text, results[0], body), model_version=served.version)


@router.post("/batch", summary="Entities in several texts, one result per text", responses=_ERRORS)
async def predict_batch(
    body: BatchPredictRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: PredictPrincipal,
    concurrency: ConcurrencyDep,
) -> BatchPredictResponse:
    served, results = await recognise(
        body.texts,
        batcher=batcher,
        settings=settings,
        principal=principal,
        concurrency=concurrency,
        model_version=body.model_version,
        options=body,
    )
    return BatchPredictResponse(
        results=[
            TextEntities(entities=apply_options(text, entities, body))
            for text, entities in zip(body.texts, results, strict=True)
        ],
        model_version=served.version,
    )
