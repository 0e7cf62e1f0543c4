"""Synchronous entity recognition: one text, or a batch of texts, answered in the request."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from gateway.deps import SettingsDep, require_scope
from gateway.prediction import BatcherDep
from shared.engine import Entity
from shared.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    EntityOut,
    PredictRequest,
    PredictResponse,
    TextEntities,
)
from shared.serving import ModelNotReady, NoModelAvailable

router = APIRouter(prefix="/predict", tags=["predict"], dependencies=[Depends(require_scope("predict"))])

_ERRORS = {
    413: {"description": "A text or the batch is over its limit; the message names the limit."},
    422: {"description": "Missing, empty or non-string text, or a body that is not JSON."},
    503: {"description": "No model to serve yet (the message says how to get one) or still loading."},
}


def _too_large(what: str, size: int, limit: int, setting: str) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        detail=f"{what} is {size:,}; the limit is {limit:,} ({setting}). "
        "Submit larger work as a bulk job (POST /jobs).",
    )


def _check_length(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise _too_large(f"{field} length in characters", len(text), limit, "NER_PREDICT_MAX_CHARS")


async def _run(batcher: BatcherDep, texts: list[str]) -> tuple[int | None, list[list[Entity]]]:
    try:
        served, results = await batcher.submit(texts)
    except NoModelAvailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
    except ModelNotReady as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), headers={"Retry-After": "5"}
        ) from None
    return served.version, results


def _out(entities: list[Entity]) -> list[EntityOut]:
    return [EntityOut.model_validate(entity, from_attributes=True) for entity in entities]


@router.post("/", summary="Entities in one text", responses=_ERRORS)
async def predict(body: PredictRequest, batcher: BatcherDep, settings: SettingsDep) -> PredictResponse:
    _check_length("text", body.text, settings.predict_max_chars)
    version, results = await _run(batcher, [body.text])
    return PredictResponse(entities=_out(results[0]), model_version=version)


@router.post("/batch", summary="Entities in several texts, one result per text", responses=_ERRORS)
async def predict_batch(
    body: BatchPredictRequest, batcher: BatcherDep, settings: SettingsDep
) -> BatchPredictResponse:
    if len(body.texts) > settings.predict_batch_max_texts:
        raise _too_large(
            "the number of texts",
            len(body.texts),
            settings.predict_batch_max_texts,
            "NER_PREDICT_BATCH_MAX_TEXTS",
        )
    for index, text in enumerate(body.texts):
        _check_length(f"texts[{index}]", text, settings.predict_max_chars)
    version, results = await _run(batcher, body.texts)
    return BatchPredictResponse(
        results=[TextEntities(entities=_out(entities)) for entities in results], model_version=version
    )
