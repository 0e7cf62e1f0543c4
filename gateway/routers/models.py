"""The model registry: list versions, inspect one, activate one (also a roll-back), import a model."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Request, status

from gateway.deps import Principal, SessionDep, SettingsDep, require_scope
from shared.core.celery_app import TRAINING_QUEUE, celery_app
from shared.registry import importer, service
from shared.registry.errors import ImportUnavailable, VersionNotFound
from shared.registry.schemas import (
    ImportRequest,
    ModelVersionDetail,
    ModelVersionList,
    ModelVersionOut,
    version_detail,
    version_list,
)

router = APIRouter(prefix="/models", tags=["models"])

ReadPrincipal = Annotated[Principal, Depends(require_scope("train"))]
# Versions are Postgres integers: a larger number is a 422, never an overflow 500.
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Model version number")]
_NOT_FOUND = {404: {"description": "No such model version"}}


View = TypeVar("View", bound=ModelVersionOut)


def _redacted(view: View) -> View:
    """What a non-admin key sees: no server paths, no other keys' data references."""
    hidden: dict[str, Any] = {"data_ref": {}, "load_error": "not loadable" if view.load_error else None}
    if isinstance(view, ModelVersionDetail):
        hidden["path"] = ""
    if view.base_model.startswith(("/", ".", "~")):
        hidden["base_model"] = "(a local folder)"
    return view.model_copy(update=hidden)


@router.get("", response_model=ModelVersionList, summary="All model versions, newest first")
def list_versions(session: SessionDep, principal: ReadPrincipal) -> ModelVersionList:
    listing = version_list(service.list_versions(session=session))
    if principal.is_admin:
        return listing
    return listing.model_copy(update={"versions": [_redacted(view) for view in listing.versions]})


@router.get(
    "/{version}",
    response_model=ModelVersionDetail,
    summary="One version with its metrics",
    responses=_NOT_FOUND,
)
def get_version(version: VersionPath, session: SessionDep, principal: ReadPrincipal) -> ModelVersionDetail:
    row = service.get_version(session=session, version=version)
    if row is None:
        raise VersionNotFound(f"model version {version} does not exist")
    detail = version_detail(row)
    return detail if principal.is_admin else _redacted(detail)


@router.post(
    "/{version}/activate",
    response_model=ModelVersionDetail,
    summary="Make a version active (also a roll-back); gateway and workers switch within seconds",
    responses={
        **_NOT_FOUND,
        409: {"description": "The version's folder is missing or corrupt; nothing changed"},
    },
    dependencies=[Depends(require_scope("admin"))],
)
def activate_version(
    version: VersionPath, request: Request, session: SessionDep, settings: SettingsDep
) -> ModelVersionDetail:
    row = service.promote(session=session, version=version, redis_url=settings.redis_url)
    # This process's own model provider need not wait for the pub/sub message.
    provider = getattr(request.app.state, "model_provider", None)
    if provider is not None:
        provider.notify()
    return version_detail(row)


@router.post(
    "/import",
    response_model=ModelVersionDetail,
    status_code=status.HTTP_201_CREATED,
    summary="Register a model folder or Hugging Face model id as a new version (loaded and run first)",
    responses={
        422: {"description": "Not a loadable token-classification model, or a folder outside the data roots"},
        503: {"description": "This gateway serves no model (NER_SERVE_PREDICT=false) and cannot check one"},
    },
    dependencies=[Depends(require_scope("admin"))],
)
def import_version(
    body: ImportRequest, request: Request, session: SessionDep, settings: SettingsDep
) -> ModelVersionDetail:
    if not settings.serve_predict:
        raise ImportUnavailable(
            "this gateway loads no model (NER_SERVE_PREDICT=false), so it cannot check one: "
            "import through a gateway that serves /predict/, or with `ner models import`"
        )
    from shared.predict.engine import NerEngine  # torch: this gateway serves /predict/ anyway

    imported = importer.import_model(
        session=session,
        artifacts_dir=settings.artifacts_dir,
        source=body.source,
        verify=importer.engine_verifier(NerEngine.load),
        activate=body.activate,
        redis_url=settings.redis_url,
        # A caller's folder must lie where training data may: never anywhere on the server.
        roots=settings.data_roots,
        settings=settings,
    )
    assert imported is not None  # only a fixed version number (a first start) can be taken
    # Its gate scores come from the trainer (the gate's evaluation is trainer code); a trainer scores
    # it when the operator has a gate set, and /models shows them once recorded.
    celery_app.send_task(importer.SCORE_TASK, args=[imported.version.version], queue=TRAINING_QUEUE)
    provider = getattr(request.app.state, "model_provider", None)
    if body.activate and provider is not None:
        provider.notify()
    return version_detail(imported.version)
