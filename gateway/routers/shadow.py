"""Shadow traffic: run a sample of live /predict texts through a candidate version too (issue 15)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from gateway.deps import Principal, SessionDep, SettingsDep, require_scope
from shared.shadow import service
from shared.shadow.schemas import SampleEntity, ShadowRequest, ShadowView

router = APIRouter(prefix="/models", tags=["models"])

# Who may list the registry (GET /models) may read a version's shadow statistics.
ReadPrincipal = Annotated[Principal, Depends(require_scope("train"))]
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Model version number")]
_RESPONSES = {404: {"description": "No such model version"}}


def _without_text(view: ShadowView) -> ShadowView:
    """What a non-admin key sees: the samples' offsets and types, never other callers' texts."""

    def bare(entities: list[SampleEntity]) -> list[SampleEntity]:
        return [e.model_copy(update={"word": None}) for e in entities]

    samples = [
        s.model_copy(
            update={
                "excerpt": None,
                "active_entities": bare(s.active_entities),
                "shadow_entities": bare(s.shadow_entities),
            }
        )
        for s in view.samples
    ]
    return view.model_copy(update={"samples": samples})


@router.get(
    "/{version}/shadow",
    response_model=ShadowView,
    responses=_RESPONSES,
    summary="A version's shadow traffic: agreement with the active version, changes by type, disagreements",
)
def get_shadow(
    version: VersionPath, session: SessionDep, settings: SettingsDep, principal: ReadPrincipal
) -> ShadowView:
    view = service.shadow_view(session=session, settings=settings, version=version)
    return view if principal.is_admin else _without_text(view)


@router.post(
    "/{version}/shadow",
    response_model=ShadowView,
    responses={**_RESPONSES, 409: {"description": "The version is the active version"}},
    summary="Shadow a version: a share of live /predict texts also runs through it, off the request path",
    dependencies=[Depends(require_scope("admin"))],
)
def set_shadow(
    version: VersionPath, body: ShadowRequest, session: SessionDep, settings: SettingsDep
) -> ShadowView:
    service.set_shadow(
        session=session, version=version, sample_rate=body.sample_rate, redis_url=settings.redis_url
    )
    return service.shadow_view(session=session, settings=settings, version=version)


@router.delete(
    "/{version}/shadow",
    response_model=ShadowView,
    responses=_RESPONSES,
    summary="Stop shadowing a version (with discard=true also delete its statistics and samples)",
    dependencies=[Depends(require_scope("admin"))],
)
def stop_shadow(
    version: VersionPath,
    session: SessionDep,
    settings: SettingsDep,
    discard: Annotated[
        bool, Query(description="Also delete the statistics and disagreement samples")
    ] = False,
) -> ShadowView:
    service.stop_shadow(session=session, version=version, redis_url=settings.redis_url)
    if discard:
        service.forget(session=session, version=version)
    return service.shadow_view(session=session, settings=settings, version=version)
