"""FastAPI dependencies: settings, a database session per request, and API-key scopes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings
from shared.db import get_sessionmaker
from shared.models import ApiKeyScope


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

    @property
    def is_admin(self) -> bool:
        return self.scope == ApiKeyScope.admin


def require_scope(scope: str) -> Callable[..., Principal]:
    """A dependency that admits callers whose key carries ``scope`` (or admin)."""
    wanted = ApiKeyScope(scope)

    def dependency() -> Principal:
        # API keys arrive with the operations issue; until then every caller acts as admin.
        assert wanted in ApiKeyScope
        return Principal(key_id=None, scope=ApiKeyScope.admin)

    return dependency
