"""Leaving the shared test database's registry and training queue as a test module found them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from sqlalchemy import delete, select, update

from shared.core.db import session_scope
from shared.core.tables import ModelVersion, TrainingRun, VersionStatus
from shared.registry import service as registry


@contextmanager
def registry_restored(redis_url: str) -> Iterator[None]:
    """Versions added inside are deleted, runs dropped, the active version put back, the queue emptied."""
    with session_scope() as session:
        before = set(session.scalars(select(ModelVersion.version)))
        active = registry.get_active(session=session)
        active_version = active.version if active else None
    yield
    with session_scope() as session:
        session.execute(delete(ModelVersion).where(ModelVersion.version.not_in(before or {-1})))
        session.execute(delete(TrainingRun))
        session.flush()
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.status == VersionStatus.active)
            .values(status=VersionStatus.retired)
        )
        if active_version is not None:
            session.flush()
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.version == active_version)
                .values(status=VersionStatus.active)
            )
    redis.Redis.from_url(redis_url).delete("training")
