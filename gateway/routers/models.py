"""The model registry: list versions, inspect one, activate one (also a roll-back)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status

from gateway.deps import Principal, SessionDep, SettingsDep, require_scope
from shared import registry
from shared.models import ModelVersion
from shared.schemas import ModelVersionDetail, ModelVersionList, ModelVersionOut

router = APIRouter(prefix="/models", tags=["models"])

ReadPrincipal = Annotated[Principal, Depends(require_scope("train"))]
# Versions are Postgres integers: a larger number is a 422, never an overflow 500.
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Model version number")]
_NOT_FOUND = {404: {"description": "No such model version"}}


def version_view(row: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut(
        version=row.version,
        status=row.status.value,
        base_model=row.base_model,
        data_hash=row.data_hash,
        data_ref=row.data_ref or {},
        labels=row.labels or [],
        val_f1=row.val_f1,
        test_f1=row.test_f1,
        training_run_id=row.training_run_id,
        created_at=row.created_at,
        activated_at=row.activated_at,
    )


def version_detail(row: ModelVersion) -> ModelVersionDetail:
    return ModelVersionDetail(
        **version_view(row).model_dump(), path=row.path, params=row.params or {}, metrics=row.metrics or {}
    )


def _get(session: SessionDep, version: int) -> ModelVersion:
    row = registry.get_version(session=session, version=version)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"model version {version} does not exist")
    return row


@router.get("", response_model=ModelVersionList, summary="All model versions, newest first")
def list_versions(session: SessionDep, principal: ReadPrincipal) -> ModelVersionList:
    rows = registry.list_versions(session=session)
    active = next((row.version for row in rows if row.status.value == "active"), None)
    return ModelVersionList(active=active, versions=[version_view(row) for row in rows])


@router.get(
    "/{version}",
    response_model=ModelVersionDetail,
    summary="One version with its metrics",
    responses=_NOT_FOUND,
)
def get_version(version: VersionPath, session: SessionDep, principal: ReadPrincipal) -> ModelVersionDetail:
    return version_detail(_get(session, version))


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
    try:
        row = registry.promote(session=session, version=version, redis_url=settings.redis_url)
    except registry.VersionNotFound as exc:
        session.rollback()
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except registry.CorruptVersion as exc:
        session.rollback()
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"{exc}; the active version is unchanged"
        ) from None
    # This process's own model provider need not wait for the pub/sub message.
    provider = getattr(request.app.state, "model_provider", None)
    if provider is not None and hasattr(provider, "notify"):
        provider.notify()
    return version_detail(row)
