"""Model versions: resolve the active one, list, activate (also a roll-back), notify."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import ModelVersion, VersionStatus

# Redis pub/sub channel on which a newly active version number is announced.
ACTIVE_CHANNEL = "ner:active-model"


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why."""


class VersionNotFound(RegistryError):
    pass


def get_active(*, session: Session) -> ModelVersion | None:
    """The active version, or None while the registry is empty."""
    return session.scalar(select(ModelVersion).where(ModelVersion.status == VersionStatus.active))


def get_version(*, session: Session, version: int) -> ModelVersion | None:
    """One version by number."""
    return session.get(ModelVersion, version)


def list_versions(*, session: Session) -> list[ModelVersion]:
    """All versions, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.version.desc())))


def activate(*, session: Session, version: int) -> ModelVersion:
    """Make ``version`` the only active version; the previous one is retired."""
    target = session.get(ModelVersion, version, with_for_update=True)
    if target is None:
        raise VersionNotFound(f"model version {version} does not exist")
    if target.status == VersionStatus.active:
        return target
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.status == VersionStatus.active)
        .values(status=VersionStatus.retired)
    )
    # Flush the retirement first: the partial unique index allows one active row at a time.
    session.flush()
    target.status = VersionStatus.active
    target.activated_at = datetime.now(UTC)
    session.flush()
    return target
