"""Label Studio's ML backend: add ``{base}/labelstudio`` as a model in a Label Studio project.

Label Studio authenticates with HTTP Basic only: the password is an API key of this service (any user
name). ``/setup``, ``/predict`` and ``/versions`` need a ``predict`` key, ``/webhook`` a ``train`` key;
an ``admin`` key does both. ``/health`` is open and never touches the model.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from gateway.deps import (
    Principal,
    SessionDep,
    SettingsDep,
    authenticate,
    require_scope,
)
from gateway.prediction import BatcherDep, recognise
from gateway.routers.predict import ConcurrencyDep
from shared.core.logging import get_request_id
from shared.core.redis import redis_client
from shared.interop import labelstudio
from shared.registry import service as registry

basic_scheme = HTTPBasic(
    scheme_name="LabelStudioBasic",
    auto_error=False,
    description="Label Studio's ML backend auth: any user name, an API key as the password.",
)


def basic_auth(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPBasicCredentials | None, Security(basic_scheme)],
) -> None:
    """Turn Basic credentials into the caller's principal; ``require_scope`` then checks its scope."""
    if settings.auth == "off" or credentials is None or not credentials.password:
        return  # no Basic credentials: X-API-Key or Bearer still work, through require_scope
    already = getattr(request.state, "principal", None)
    if isinstance(already, Principal) and already.key_id is not None:
        return  # the body guard read the same credentials before the body: one scrypt is enough
    client = request.client.host if request.client else None
    request.state.principal = authenticate(credentials.password, address=client, settings=settings)


router = APIRouter(prefix="/labelstudio", tags=["label studio"])
# On every route but /health (open, as /healthz): runs before the route's require_scope.
_BASIC = [Depends(basic_auth)]

PredictPrincipal = Annotated[Principal, Depends(require_scope("predict", rate_limited=False))]
InferPrincipal = Annotated[Principal, Depends(require_scope("predict", rate_limited=True))]
TrainPrincipal = Annotated[Principal, Depends(require_scope("train", rate_limited=False))]


def _serving_version(request: Request) -> int | None:
    provider = getattr(request.app.state, "model_provider", None)
    described = provider.describe() if provider is not None else None
    return described["version"] if described else None  # type: ignore[return-value]


@router.get("/health", summary="Label Studio's health check (never touches the model)")
def health() -> dict[str, str]:
    return {"status": "UP", "model_class": "ner-service"}


@router.post(
    "/setup",
    dependencies=_BASIC,
    summary="Label Studio connects a project: its labelling config is checked",
    responses={400: {"description": "A labelling config without one <Labels> over one <Text>."}},
)
def setup(body: labelstudio.SetupRequest, request: Request, _principal: PredictPrincipal) -> dict[str, str]:
    labelstudio.parse_label_config(body.schema_)
    return {"model_version": labelstudio.model_version_name(_serving_version(request))}


@router.post(
    "/predict",
    dependencies=_BASIC,
    summary="Pre-annotations of Label Studio tasks: one labels region per entity",
    responses={
        400: {"description": "A bad labelling config or a task without its text; the message names it."},
        413: {"description": "A text or the batch is over its limit; the message names the limit."},
        503: {"description": "No model to serve yet (the message says how to get one) or still loading."},
    },
)
async def predict(
    body: labelstudio.PredictRequest,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: InferPrincipal,
    concurrency: ConcurrencyDep,
) -> dict[str, Any]:
    config, texts = labelstudio.task_texts(body)
    served, results = await recognise(
        texts, batcher=batcher, settings=settings, principal=principal, concurrency=concurrency
    )
    return {
        "results": [labelstudio.prediction(config, entities, served.version) for entities in results],
        "model_version": labelstudio.model_version_name(served.version),
    }


@router.get(
    "/versions", dependencies=_BASIC, summary="The registry's versions, as Label Studio lists model versions"
)
def versions(session: SessionDep, _principal: PredictPrincipal) -> dict[str, list[str]]:
    return {"versions": [str(row.version) for row in registry.list_versions(session=session)]}


@router.post(
    "/webhook",
    dependencies=_BASIC,
    summary="START_TRAINING (or every NER_LABEL_STUDIO_TRAIN_EVERY new annotations) queues a training run",
    responses={
        400: {"description": "An event without a project id, or a project without annotated tasks."},
        502: {"description": "Label Studio's API refused or failed the export of the project."},
        503: {"description": "NER_LABEL_STUDIO_URL / NER_LABEL_STUDIO_TOKEN not set, or the broker is down."},
    },
)
def webhook(
    body: labelstudio.WebhookEvent, session: SessionDep, settings: SettingsDep, principal: TrainPrincipal
) -> dict[str, Any]:
    if body.action in labelstudio.TRAINING_ACTIONS:
        start = True
    elif body.action in labelstudio.ANNOTATION_ACTIONS and settings.label_studio_train_every:
        start = labelstudio.count_annotation(
            redis=redis_client(settings.redis_url),
            project=labelstudio.project_id(body),
            threshold=settings.label_studio_train_every,
        )
    else:
        return {"status": "ignored", "action": body.action}
    if not start:
        return {"status": "counted", "action": body.action}
    return labelstudio.start_training(
        session=session,
        settings=settings,
        project=labelstudio.project_id(body),
        owner=principal.owner,
        request_id=get_request_id(),
    )
