"""The Hugging Face Inference API shape: ``InferenceClient(...).token_classification`` works unchanged.

Point the client at ``{base}/hf`` (``model=`` or ``base_url=``); ``/hf/models/{model_id}`` accepts
the Inference API's own path too (the id is not used: this service serves its active version).
Same key scope, limits and micro-batcher as ``/predict/``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from gateway.deps import Principal, SettingsDep, require_scope
from gateway.prediction import BatcherDep, recognise
from gateway.routers.predict import ConcurrencyDep
from shared.interop import hf
from shared.predict.schemas import Entity

router = APIRouter(prefix="/hf", tags=["hugging face"])

HfPrincipal = Annotated[Principal, Depends(require_scope("predict", rate_limited=True))]

_ERRORS = {
    413: {"description": "A text or the batch is over its limit; the message names the limit."},
    422: {"description": "Missing or empty inputs, an unknown parameter, or a body that is not JSON."},
    503: {"description": "No model to serve yet (the message says how to get one) or still loading."},
}


async def _token_classification(
    body: hf.TokenClassificationRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: Principal,
    concurrency: ConcurrencyDep,
) -> list[Entity] | list[list[Entity]]:
    texts = body.texts()
    single = isinstance(body.inputs, str)
    _served, results = await recognise(
        texts,
        batcher=batcher,
        settings=settings,
        principal=principal,
        concurrency=concurrency,
        field="inputs" if single else None,
    )
    return hf.answer(body, results)


@router.post("", summary="Token classification, as the Hugging Face Inference API", responses=_ERRORS)
async def token_classification(
    body: hf.TokenClassificationRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: HfPrincipal,
    concurrency: ConcurrencyDep,
) -> list[Entity] | list[list[Entity]]:
    return await _token_classification(body, batcher, settings, principal, concurrency)


@router.post(
    "/models/{model_id:path}",
    summary="Token classification at the Inference API's path (the id is ignored)",
    responses=_ERRORS,
)
async def token_classification_model(
    model_id: str,
    body: hf.TokenClassificationRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: HfPrincipal,
    concurrency: ConcurrencyDep,
) -> list[Entity] | list[list[Entity]]:
    del model_id  # one service, one active model: the id is the client's, not ours
    return await _token_classification(body, batcher, settings, principal, concurrency)
