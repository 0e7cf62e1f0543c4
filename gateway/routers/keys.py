"""The calling API key: its name and scopes (the web UI checks a key with it when it is saved)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.deps import ApiKeyHeaderDep, BearerDep, Principal, SessionDep, SettingsDep, authenticate
from shared.core.tables import ApiKeyScope
from shared.keys import service
from shared.keys.schemas import KeyInfo, key_info

router = APIRouter(prefix="/keys", tags=["keys"])


def any_key(
    request: Request, settings: SettingsDep, header_key: ApiKeyHeaderDep, bearer: BearerDep
) -> Principal:
    """Any live key, whatever its scope (a metrics key may ask who it is); 401 without one."""
    if settings.auth == "off":
        return Principal(key_id=None, scope=ApiKeyScope.admin)
    client = request.client.host if request.client else None
    presented = header_key or (bearer.credentials if bearer else None)
    principal = authenticate(presented, address=client, settings=settings)
    request.state.principal = principal  # the access log names the key (prefix)
    return principal


@router.get(
    "/me",
    response_model=KeyInfo,
    summary="The calling key's name and scopes",
    responses={401: {"description": "No key, or an unknown or revoked one"}},
)
def me(
    principal: Annotated[Principal, Depends(any_key)], session: SessionDep, settings: SettingsDep
) -> KeyInfo:
    name = service.key_name(session=session, key_id=principal.key_id) if principal.key_id is not None else ""
    return key_info(
        name=name,
        prefix=principal.prefix,
        scope=principal.scope,
        rate_limit_per_minute=principal.rate_limit_per_minute,
        auth=settings.auth != "off",
    )
