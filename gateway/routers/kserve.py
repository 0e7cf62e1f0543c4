"""The Open Inference Protocol (KServe V2 REST): ``tritonclient.http`` and KServe clients work unchanged.

Health probes are open (as ``/healthz``); model metadata needs a ``predict`` key; ``infer`` has the
same key scope, limits and micro-batcher as ``/predict/``. The protocol lives in ``shared.interop.kserve``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from gateway.deps import Principal, SessionDep, SettingsDep, require_scope
from gateway.limits import KeyConcurrency
from gateway.prediction import BatcherDep, recognise
from gateway.routers.predict import ConcurrencyDep
from shared.interop import kserve
from shared.registry import service as registry

router = APIRouter(prefix="/v2", tags=["kserve v2"])

_NOT_FOUND = {404: {"description": "No such model (the one model is `ner`) or no such registry version."}}
_NOT_READY = {503: {"description": "No model loaded yet, or that version is not loaded (yet)."}}

ReadPrincipal = Annotated[Principal, Depends(require_scope("predict", rate_limited=False))]
InferPrincipal = Annotated[Principal, Depends(require_scope("predict", rate_limited=True))]


def _versions(session: SessionDep) -> list[int]:
    return [row.version for row in registry.list_versions(session=session)]


VersionsDep = Annotated[list[int], Depends(_versions)]


def _model_ready(request: Request, version: int | None) -> bool:
    """A model answers; with ``version``: that version is loaded (active, or pinned and cached)."""
    provider = getattr(request.app.state, "model_provider", None)
    if provider is None:
        return False
    if version is None:
        return bool(provider.ready)
    return provider.loaded(version) is not None


@router.get("", summary="Server metadata")
def server_metadata(request: Request, _principal: ReadPrincipal) -> dict[str, Any]:
    return kserve.server_metadata(request.app.version)


@router.get("/health/live", summary="The server is alive")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="A model is loaded (503 until then)", responses=_NOT_READY)
def ready(request: Request, response: Response) -> dict[str, bool]:
    ok = _model_ready(request, None)
    if not ok:
        response.status_code = 503
    return {"ready": ok}


@router.get(
    "/models/{name}", summary="Model metadata: its registry versions, input and output", responses=_NOT_FOUND
)
def model_metadata(name: str, versions: VersionsDep, _principal: ReadPrincipal) -> dict[str, Any]:
    kserve.check_model(name)
    return kserve.model_metadata(versions)


@router.get(
    "/models/{name}/versions/{version}", summary="Metadata of one registry version", responses=_NOT_FOUND
)
def version_metadata(
    name: str, version: str, versions: VersionsDep, _principal: ReadPrincipal
) -> dict[str, Any]:
    kserve.check_model(name)
    return kserve.model_metadata([kserve.check_version(version, versions)])


@router.get(
    "/models/{name}/ready",
    summary="The model answers (503 until it is loaded)",
    responses={**_NOT_FOUND, **_NOT_READY},
)
def model_ready(name: str, request: Request, response: Response, _principal: ReadPrincipal) -> dict[str, Any]:
    kserve.check_model(name)
    ok = _model_ready(request, None)
    response.status_code = 200 if ok else 503
    return {"name": name, "ready": ok}


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="This version is loaded (the active one, or pinned earlier); infer loads it otherwise",
    responses={**_NOT_FOUND, **_NOT_READY},
)
def version_ready(
    name: str,
    version: str,
    request: Request,
    response: Response,
    versions: VersionsDep,
    _principal: ReadPrincipal,
) -> dict[str, Any]:
    kserve.check_model(name)
    ok = _model_ready(request, kserve.check_version(version, versions))
    response.status_code = 200 if ok else 503
    return {"name": name, "version": version, "ready": ok}


async def _infer(
    request: Request,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: Principal,
    concurrency: KeyConcurrency,
    version: int | None,
) -> Response:
    call = kserve.parse_infer(await request.body(), request.headers.get(kserve.HEADER_LENGTH))
    # A version other than the active one is loaded on demand (as /predict/'s model_version),
    # without holding up requests to the active version.
    served, results = await recognise(
        call.texts,
        batcher=batcher,
        settings=settings,
        principal=principal,
        concurrency=concurrency,
        model_version=version,
    )
    body, headers = kserve.infer_response(call=call, results=results, model_version=served.version)
    return Response(content=body, headers=headers, media_type=headers["Content-Type"])


_INFER_DOC = {
    "description": "One BYTES input of texts (JSON `data` or Triton's binary extension); one BYTES "
    "output `entities`: a JSON list of entities per text.",
    "responses": {
        400: {"description": "Not a V2 request of texts; the message says what is wrong."},
        413: {"description": "A text or the batch is over its limit; the message names the limit."},
        **_NOT_FOUND,
        409: {"description": "The version is in the registry but its files do not load here."},
        503: {"description": "No model to serve yet (the message says how to get one) or still loading."},
    },
}


@router.post("/models/{name}/infer", summary="Entities of each text", **_INFER_DOC)
async def infer(
    name: str,
    request: Request,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: InferPrincipal,
    concurrency: ConcurrencyDep,
) -> Response:
    kserve.check_model(name)
    return await _infer(request, batcher, settings, principal, concurrency, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Entities by one version", **_INFER_DOC)
async def infer_version(
    name: str,
    version: str,
    request: Request,
    batcher: BatcherDep,
    settings: SettingsDep,
    principal: InferPrincipal,
    concurrency: ConcurrencyDep,
    versions: VersionsDep,
) -> Response:
    kserve.check_model(name)
    wanted = kserve.check_version(version, versions)
    return await _infer(request, batcher, settings, principal, concurrency, wanted)
