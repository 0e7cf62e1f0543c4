"""FastAPI dependencies: settings, a database session per request, and API-key scopes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from shared.core.config import Settings, get_settings
from shared.core.db import get_sessionmaker
from shared.core.tables import ApiKeyScope
from shared.keys import ratelimit
from shared.keys import service as keys
from shared.keys.errors import Forbidden, RateLimited, Unauthenticated
from shared.keys.owner import Owner


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key's id (None when auth is off) and its scope."""

    key_id: int | None
    scope: ApiKeyScope
    prefix: str | None = None  # the key's non-secret prefix, for logs

    @property
    def is_admin(self) -> bool:
        return self.scope == ApiKeyScope.admin

    @property
    def owner(self) -> Owner:
        """Whose jobs and runs this caller sees."""
        return Owner(key_id=self.key_id, admin=self.is_admin)


# Both schemes appear in the OpenAPI document (and the "Authorize" button of /docs); either works.
api_key_header = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", auto_error=False, description="An API key (`ner keys create`)."
)
bearer_scheme = HTTPBearer(
    scheme_name="Bearer", auto_error=False, description="The same API key as `Authorization: Bearer`."
)
ApiKeyHeaderDep = Annotated[str | None, Security(api_key_header)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]


def _authenticate(presented: str | None) -> Principal:
    """The principal of a presented key; 401 when it is missing, unknown or revoked."""
    if not presented:
        raise Unauthenticated(
            "missing API key: send it in the X-API-Key header or as Authorization: Bearer <key>"
        )
    # A session of its own, closed at once: a connection must not stay checked out for the whole
    # (maybe long) request.
    with get_sessionmaker()() as session:
        key = keys.authenticate(session=session, plaintext=presented.strip())
    if key is None:
        raise Unauthenticated("invalid or revoked API key", error="invalid_token")
    return Principal(key_id=key.id, scope=key.scope, prefix=key.prefix)


def is_rate_limited_route(method: str, template: str) -> bool:
    """``/predict*``, and job submission: a POST to a jobs route that names no existing job."""
    if template.startswith("/predict"):
        return True
    return method == "POST" and template.startswith("/jobs") and "{" not in template


def _enforce_rate_limit(principal: Principal, settings: Settings) -> None:
    decision = ratelimit.check_rate(
        redis_url=settings.redis_url,
        key=f"key:{principal.key_id}",
        per_minute=settings.rate_limit_per_minute,
        burst=settings.rate_limit_burst,
    )
    if not decision.allowed:
        raise RateLimited(
            f"rate limit of {settings.rate_limit_per_minute} requests a minute for this API key "
            f"exceeded; retry in {decision.retry_after_s} s",
            retry_after_s=decision.retry_after_s,
        )


def require_scope(scope: str, *, rate_limited: bool | None = None) -> Callable[..., Principal]:
    """A dependency that admits callers whose key carries ``scope`` (or admin).

    Missing, unknown or revoked key: 401; another scope: 403; over the key's rate limit on
    ``/predict*`` and job submission (or wherever ``rate_limited=True``): 429 with Retry-After.
    ``NER_AUTH=off`` admits everyone as admin, without limits.
    """
    wanted = ApiKeyScope(scope)

    def dependency(
        request: Request, settings: SettingsDep, header_key: ApiKeyHeaderDep, bearer: BearerDep
    ) -> Principal:
        if settings.auth == "off":
            principal = Principal(key_id=None, scope=ApiKeyScope.admin)
        else:
            principal = _authenticate(header_key or (bearer.credentials if bearer else None))
            request.state.principal = principal  # the access log names the key (prefix) from here on
            if not principal.is_admin and principal.scope != wanted:
                raise Forbidden(
                    f"this API key has scope {principal.scope.value!r}; this route needs {scope!r}"
                )
            limited = rate_limited
            if limited is None:
                template = getattr(request.scope.get("route"), "path", request.url.path)
                limited = is_rate_limited_route(request.method, template)
            if limited:
                _enforce_rate_limit(principal, settings)
        request.state.principal = principal
        return principal

    return dependency
