"""Redaction: a text with its entities replaced (``mask``, ``type`` or a keyed ``hash``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from gateway.deps import Principal, SettingsDep, require_scope
from gateway.prediction import BatcherDep, recognise
from gateway.routers.predict import ConcurrencyDep
from shared.predict.errors import RedactionNotConfigured
from shared.predict.redact import redact_entities
from shared.predict.schemas import RedactRequest, RedactResponse

router = APIRouter(tags=["predict"])

RedactPrincipal = Annotated[Principal, Depends(require_scope("predict", rate_limited=True))]

_ERRORS = {
    404: {"description": "`model_version` names a version the registry does not have."},
    409: {"description": "`model_version` exists but its files do not load; the message says why."},
    413: {"description": "The text is over NER_PREDICT_MAX_CHARS."},
    422: {
        "description": "A missing or empty text, an unknown `mode` or `offset_encoding`, a type the "
        "model does not have, or a score outside [0, 1]; the message names the field."
    },
    503: {"description": "No model yet, or `hash` asked while NER_REDACT_KEY is not set."},
}


@router.post("/redact", summary="The text with its entities replaced", responses=_ERRORS)
async def redact(
    body: RedactRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: RedactPrincipal,
    concurrency: ConcurrencyDep,
) -> RedactResponse:
    key = settings.redact_key.get_secret_value().encode() if settings.redact_key is not None else b""
    if body.mode == "hash" and not key:
        raise RedactionNotConfigured(
            "mode: 'hash' needs a key and NER_REDACT_KEY is not set on this server; "
            "use 'mask' or 'type', or ask the operator to set it"
        )
    served, results = await recognise(
        [body.text],
        batcher=batcher,
        settings=settings,
        principal=principal,
        concurrency=concurrency,
        field="text",
        model_version=body.model_version,
        options=body,
        types=body.types,
    )
    text, entities = redact_entities(
        body.text, results[0], body, mode=body.mode, key=key, types=body.types, mask_char=body.mask_char
    )
    return RedactResponse(text=text, entities=entities, model_version=served.version)
