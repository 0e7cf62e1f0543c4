"""FastAPI dependencies: settings, a database session per request, and API-key scopes.

The request path of a key the process checked a moment ago runs on the event loop: FastAPI runs a
plain ``def`` dependency in the thread pool, and under a flood every request (refused ones too)
would queue for those threads. Settings are read from their cache, the key from the short cache of
``keys.recently_verified`` and the bucket charged with ``redis.asyncio``; only a key not seen for
``keys.RECENT_TTL_S`` goes to a thread (the database, maybe scrypt).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, TypedDict

import anyio
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.types import Scope

from shared.core.config import Settings, get_settings
from shared.core.db import get_sessionmaker
from shared.core.redis import redis_client
from shared.core.tables import ApiKeyScope
from shared.keys import ratelimit
from shared.keys import service as keys
from shared.keys.errors import Forbidden, RateLimited, Unauthenticated
from shared.keys.owner import Owner


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


async def current_settings() -> Settings:
    """``get_settings()`` as a dependency that runs on the event loop (it is cached: no I/O)."""
    return get_settings()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(current_settings)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the API key's id (None when auth is off) and its scope."""

    key_id: int | None
    scope: ApiKeyScope
    prefix: str | None = None  # the key's non-secret prefix, for logs
    rate_limit_per_minute: int | None = None  # the key's own limit; None: NER_RATE_LIMIT_PER_MINUTE

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


def authenticate(presented: str | None, *, address: str | None, settings: Settings) -> Principal:
    """The principal of a presented key; 401 when it is missing, unknown or revoked.

    Failed checks are counted per client address and key prefix; past NER_AUTH_FAIL_LIMIT in a
    window the next one is refused (429) before any scrypt is spent on it.
    """
    if not presented:
        raise _missing()
    plaintext = presented.strip()
    prefix = keys.parse_prefix(plaintext)
    throttle = ratelimit.AuthThrottle(
        redis_client(settings.redis_url), limit=settings.auth_fail_limit, window_s=settings.auth_fail_window_s
    )

    def before_scrypt(key_prefix: str) -> None:
        wait = throttle.retry_after(address=address, prefix=key_prefix)
        if wait:
            raise RateLimited(
                f"too many failed API key checks from this address or for this key; retry in {wait} s",
                retry_after_s=wait,
            )

    # A session of its own, closed at once: a connection must not stay checked out for the whole
    # (maybe long) request.
    with get_sessionmaker()() as session:
        key = keys.authenticate(session=session, plaintext=plaintext, before_scrypt=before_scrypt)
    if key is None:
        if prefix is not None:  # only checks that cost a scrypt are counted
            throttle.record_failure(address=address, prefix=prefix)
        raise Unauthenticated("invalid or revoked API key", error="invalid_token")
    return _principal(key)


# Checks under way in a worker thread, by (loop, key digest, address): concurrent requests with the
# same key wait for one check (a flood's first requests, or every request when the short cache
# expires) instead of each taking a thread, a query and maybe a scrypt.
_checks: dict[tuple[asyncio.AbstractEventLoop, bytes, str | None], asyncio.Future[Principal]] = {}


async def authenticate_async(presented: str | None, *, address: str | None, settings: Settings) -> Principal:
    """``authenticate`` for the event loop: a key verified here within ``keys.RECENT_TTL_S`` is
    admitted at once; any other goes to a worker thread (database, throttle, scrypt), one check at
    a time per key and address."""
    if not presented:
        raise _missing()
    plaintext = presented.strip()
    key = keys.recently_verified(plaintext)
    if key is not None:
        return _principal(key)
    loop = asyncio.get_running_loop()
    flight = (loop, hashlib.sha256(plaintext.encode()).digest(), address)
    check = _checks.get(flight)
    if check is None:
        # A task of its own: a caller that goes away does not cancel the others' answer.
        check = loop.create_task(
            anyio.to_thread.run_sync(lambda: authenticate(plaintext, address=address, settings=settings))
        )
        _checks[flight] = check
        check.add_done_callback(lambda done: _check_done(flight, done))
    return await asyncio.shield(check)


def _check_done(
    flight: tuple[asyncio.AbstractEventLoop, bytes, str | None], check: asyncio.Future[Principal]
) -> None:
    _checks.pop(flight, None)
    if not check.cancelled():
        check.exception()  # retrieved: no "never retrieved" warning when every caller went away


def _missing() -> Unauthenticated:
    return Unauthenticated(
        "missing API key: send it in the X-API-Key header or as Authorization: Bearer <key>"
    )


def _principal(key: keys.AuthenticatedKey) -> Principal:
    return Principal(
        key_id=key.id, scope=key.scope, prefix=key.prefix, rate_limit_per_minute=key.rate_limit_per_minute
    )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of ``X-API-Key``, ``Authorization: Bearer`` or (Label Studio) the password of
    ``Authorization: Basic``, as the security schemes read them."""
    if value := headers.get("x-api-key"):
        return value
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def is_rate_limited_route(method: str, template: str) -> bool:
    """``/predict*``; job submission (a POST to a jobs route that names no existing job); starting a
    training run and uploading training data."""
    if template.startswith("/predict"):
        return True
    if method == "POST" and template in ("/train", "/train/uploads"):
        return True
    return method == "POST" and template.startswith("/jobs") and "{" not in template


def _per_minute(principal: Principal, settings: Settings) -> int:
    return principal.rate_limit_per_minute or settings.rate_limit_per_minute


class _BucketArgs(TypedDict):
    redis_url: str
    key: str
    per_minute: int
    burst: int | None
    cost: int


def _bucket(principal: Principal, settings: Settings, cost: int) -> _BucketArgs:
    """The arguments of ``ratelimit.check_cost`` (and its async twin) for this key."""
    return {
        "redis_url": settings.redis_url,
        "key": f"key:{principal.key_id}",
        "per_minute": _per_minute(principal, settings),
        # A key's own limit sizes its own bucket; the shared burst setting is for the default.
        "burst": None if principal.rate_limit_per_minute else settings.rate_limit_burst,
        "cost": cost,
    }


def _refuse_unless_allowed(decision: ratelimit.Decision, principal: Principal, settings: Settings) -> None:
    if not decision.allowed:
        raise RateLimited(
            f"rate limit of {_per_minute(principal, settings)} requests a minute for this API key exceeded "
            f"(a request costs 1 + characters / {settings.rate_limit_chars_per_token}); "
            f"retry in {decision.retry_after_s} s",
            retry_after_s=decision.retry_after_s,
        )


def charge(principal: Principal, settings: Settings, *, cost: int = 1) -> None:
    """Take ``cost`` tokens of the key's bucket; 429 with Retry-After when it has not got them."""
    if principal.key_id is None:
        return  # auth off: no limits
    decision = ratelimit.check_cost(**_bucket(principal, settings, cost))
    _refuse_unless_allowed(decision, principal, settings)


async def charge_async(principal: Principal, settings: Settings, *, cost: int = 1) -> None:
    """``charge`` on the event loop (``redis.asyncio``, the same script): no thread hop."""
    if principal.key_id is None:
        return
    decision = await ratelimit.check_cost_async(**_bucket(principal, settings, cost))
    _refuse_unless_allowed(decision, principal, settings)


def charge_characters(principal: Principal, settings: Settings, characters: int) -> None:
    """Charge the work of a predict request beyond the one token its admission cost."""
    extra = characters // settings.rate_limit_chars_per_token
    if extra:
        charge(principal, settings, cost=extra)


async def charge_characters_async(principal: Principal, settings: Settings, characters: int) -> None:
    """``charge_characters`` on the event loop."""
    extra = characters // settings.rate_limit_chars_per_token
    if extra:
        await charge_async(principal, settings, cost=extra)


def require_scope(scope: str, *, rate_limited: bool | None = None) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits callers whose key carries ``scope`` (or admin).

    Missing, unknown or revoked key: 401; another scope: 403; over the key's rate limit on
    ``/predict*`` and job submission (or wherever ``rate_limited=True``): 429 with Retry-After.
    ``NER_AUTH=off`` admits everyone as admin, without limits.
    """
    wanted = ApiKeyScope(scope)

    async def dependency(request: Request, header_key: ApiKeyHeaderDep, bearer: BearerDep) -> Principal:
        limited = rate_limited
        if limited is None:
            template = getattr(request.scope.get("route"), "path", request.url.path)
            limited = is_rate_limited_route(request.method, template)
        return await admit(
            request.scope,
            presented=header_key or (bearer.credentials if bearer else None),
            wanted=wanted,
            limited=limited,
        )

    return dependency


async def admit(scope: Scope, *, presented: str | None, wanted: ApiKeyScope, limited: bool) -> Principal:
    """``require_scope``'s check for the request of ``scope``, whose ``presented`` key (if any) the
    body guard may have checked already; the principal is kept in the request's state."""
    settings = get_settings()
    state = scope.setdefault("state", {})
    if settings.auth == "off":
        state["principal"] = principal = Principal(key_id=None, scope=ApiKeyScope.admin)
        return principal
    # Routes with a body were authenticated by the body guard before the body was read.
    principal = state.get("principal")
    if not isinstance(principal, Principal) or principal.key_id is None:
        client = scope.get("client")
        principal = await authenticate_async(
            presented, address=client[0] if client else None, settings=settings
        )
    state["principal"] = principal  # the access log names the key (prefix) from here on
    if not principal.is_admin and principal.scope != wanted:
        raise Forbidden(
            f"this API key has scope {principal.scope.value!r}; this route needs {wanted.value!r}"
        )
    if limited:
        await charge_async(principal, settings)
    return principal
