"""Response bodies of the keys API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.core.tables import ApiKeyScope

# What each scope may call (admin: everything); the UI shows these next to the key's name.
SCOPE_COVERS: dict[ApiKeyScope, list[str]] = {
    ApiKeyScope.admin: ["predict", "jobs", "train", "admin", "metrics"],
    ApiKeyScope.predict: ["predict"],
    ApiKeyScope.jobs: ["jobs"],
    ApiKeyScope.train: ["train"],
    ApiKeyScope.metrics: ["metrics"],
}


class KeyInfo(BaseModel):
    """``GET /keys/me``: the calling key, never its secret."""

    name: str = Field(description="The name given at `ner keys create`; empty when none was.")
    prefix: str | None = Field(description="The key's public prefix; null when auth is off.")
    scope: str = Field(description="predict, jobs, train, admin or metrics.")
    scopes: list[str] = Field(description="Every scope the key may use (admin covers all of them).")
    rate_limit_per_minute: int | None = Field(description="The key's own limit; null: the service default.")
    auth: bool = Field(description="False when the service runs with NER_AUTH=off (everyone is admin).")


def key_info(
    *, name: str, prefix: str | None, scope: ApiKeyScope, rate_limit_per_minute: int | None, auth: bool
) -> KeyInfo:
    return KeyInfo(
        name=name,
        prefix=prefix,
        scope=scope.value,
        scopes=SCOPE_COVERS[scope],
        rate_limit_per_minute=rate_limit_per_minute,
        auth=auth,
    )
