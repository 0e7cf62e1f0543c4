"""Model versions: resolve the active one, list, register, activate (also a roll-back), promote."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.artifacts.errors import ArtifactCorrupt, ArtifactMissing
from shared.artifacts.store import open_store
from shared.artifacts.versions import fetch_version, is_store_uri
from shared.core.config import Settings, get_settings
from shared.core.tables import ModelVersion, VersionStatus
from shared.registry.errors import ActivationConflict, CorruptVersion, VersionNotFound
from shared.registry.manifest import validate_version_folder
from shared.registry.notify import notify_active


def get_active(*, session: Session) -> ModelVersion | None:
    """The active version, or None while the registry is empty."""
    return session.scalar(select(ModelVersion).where(ModelVersion.status == VersionStatus.active))


def get_version(*, session: Session, version: int) -> ModelVersion | None:
    """One version by number."""
    return session.get(ModelVersion, version)


def list_versions(*, session: Session) -> list[ModelVersion]:
    """All versions, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.version.desc())))


def next_version_number(*, session: Session) -> int:
    """N+1 for the highest registered version N (1 for an empty registry)."""
    return (session.scalar(select(func.max(ModelVersion.version))) or 0) + 1


def register_version(
    *,
    session: Session,
    version: int,
    path: str,
    base_model: str,
    data_hash: str,
    data_ref: dict[str, Any],
    params: dict[str, Any],
    metrics: dict[str, Any],
    labels: list[str],
    val_f1: float | None,
    test_f1: float | None,
    training_run_id: Any = None,
) -> ModelVersion:
    """Insert a candidate version row (flushed, not committed)."""
    row = ModelVersion(
        version=version,
        status=VersionStatus.candidate,
        path=path,
        base_model=base_model,
        data_hash=data_hash,
        data_ref=data_ref,
        params=params,
        metrics=metrics,
        labels=labels,
        val_f1=val_f1,
        test_f1=test_f1,
        training_run_id=training_run_id,
    )
    session.add(row)
    session.flush()
    return row


def activate(*, session: Session, version: int, settings: Settings | None = None) -> ModelVersion:
    """Make ``version`` the only active version; the previous one is retired.

    The folder is checked first (safetensors weights, manifest hashes): a missing, tampered or
    pickle-only one raises CorruptVersion and nothing changes. Two activations at once: one wins,
    the other raises ActivationConflict (409). Flushed, not committed; call ``notify_active`` after
    the commit.
    """
    target = session.get(ModelVersion, version, with_for_update=True)
    if target is None:
        raise VersionNotFound(f"model version {version} does not exist")
    try:
        verify_folder(path=target.path, settings=settings)
    except CorruptVersion as exc:
        raise CorruptVersion(f"version {version}: {exc}; the active version is unchanged") from None
    if target.status == VersionStatus.active:
        return target
    try:
        # A savepoint: losing the race must not abort the caller's whole transaction.
        with session.begin_nested():
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.status == VersionStatus.active)
                .values(status=VersionStatus.retired)
            )
            # Flush the retirement first: the partial unique index allows one active row at a time.
            session.flush()
            target.status = VersionStatus.active
            target.activated_at = datetime.now(UTC)
            target.load_error = None
            target.load_error_at = None
            session.flush()
    except IntegrityError:
        # Another activation committed its version between our retirement and our flush.
        raise ActivationConflict(
            f"another version was activated at the same time as version {version}; "
            "check GET /models and retry if still wanted"
        ) from None
    return target


def verify_folder(*, path: str, settings: Settings | None = None) -> str:
    """The local folder of a version's ``path``, checked: CorruptVersion unless it is servable.

    A folder is checked in place. A URI of the artifact store (NER_ARTIFACTS_URL) is fetched into
    this node's cache first (every file compared with the manifest the registry pinned; a cached
    copy that no longer passes is fetched again once). A tampered or missing object is a
    CorruptVersion (409); a store that does not answer raises ArtifactUnavailable (503).
    """
    if not is_store_uri(path):
        validate_version_folder(path)
        return path
    settings = settings or get_settings()
    assert settings.artifacts_cache_dir is not None  # derived by Settings
    store = open_store(settings)
    for refresh in (False, True):
        try:
            folder = fetch_version(
                store=store, uri=path, cache_dir=settings.artifacts_cache_dir, refresh=refresh
            )
        except (ArtifactCorrupt, ArtifactMissing) as exc:
            raise CorruptVersion(str(exc)) from None
        try:
            validate_version_folder(folder)
            return str(folder)
        except CorruptVersion:
            if refresh:
                raise
    raise AssertionError("unreachable")


def record_load_error(*, session: Session, version: int, error: str | None) -> None:
    """Remember (or, with None, clear) why a gateway or worker could not load ``version``."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version)
        .values(load_error=error, load_error_at=datetime.now(UTC) if error else None)
    )


def fallback_versions(*, session: Session, exclude: int | None) -> list[ModelVersion]:
    """Versions that were active before, newest activation first, none known to fail to load."""
    query = (
        select(ModelVersion)
        .where(
            ModelVersion.status == VersionStatus.retired,
            ModelVersion.activated_at.is_not(None),
            ModelVersion.load_error.is_(None),
        )
        .order_by(ModelVersion.activated_at.desc())
        .limit(5)
    )
    if exclude is not None:
        query = query.where(ModelVersion.version != exclude)
    return list(session.scalars(query))


def promote(
    *, session: Session, version: int, redis_url: str, settings: Settings | None = None
) -> ModelVersion:
    """Activate ``version``, commit, and announce it (``settings``: the node's artifact store, else
    the process's)."""
    row = activate(session=session, version=version, settings=settings)
    session.commit()
    notify_active(redis_url=redis_url, version=version)
    return row
