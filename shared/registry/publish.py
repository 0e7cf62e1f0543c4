"""Publishing: a finished model folder becomes version N+1, atomically, then the gate may promote it."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.artifacts.store import ObjectStore, open_store
from shared.artifacts.versions import add_to_cache, sha256_file, upload_version, version_uri
from shared.core.config import Settings, get_settings
from shared.core.tables import ModelVersion
from shared.registry import gate, service
from shared.registry.manifest import MANIFEST, write_manifest

log = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 5


def _no_extras(folder: Path, version: int) -> None:
    """The default for ``Candidate.write_extras``: nothing beyond the model's own files."""


@dataclass(frozen=True)
class Candidate:
    """A finished model folder and what the registry stores about it."""

    model_dir: Path
    base_model: str
    data_hash: str
    data_ref: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    labels: list[str]
    val_f1: float | None
    test_f1: float | None
    training_run_id: uuid.UUID | None = None
    # Writes the files that name the version (metrics, model card) into the staged folder.
    write_extras: Callable[[Path, int], None] = field(default=_no_extras)


@dataclass(frozen=True)
class Target:
    """Where a version goes: ``artifacts_dir/v<N>`` for the folder store, else objects in ``store``
    (staged, and then cached, under ``cache_dir``)."""

    store: ObjectStore
    artifacts_dir: Path
    cache_dir: Path
    settings: Settings

    @property
    def staging_root(self) -> Path:
        # Staged next to where it ends: the final rename stays on one file system.
        return self.artifacts_dir if self.store.is_local else self.cache_dir


def target_for(artifacts_dir: Path, settings: Settings | None = None) -> Target:
    """The target of a publish: the store NER_ARTIFACTS_URL names (of ``settings``, the publishing
    node's, else the process's); ``artifacts_dir`` is where the folder store keeps versions."""
    settings = settings or get_settings()
    assert settings.artifacts_cache_dir is not None  # derived by Settings
    return Target(
        store=open_store(settings),
        artifacts_dir=artifacts_dir,
        cache_dir=settings.artifacts_cache_dir,
        settings=settings,
    )


@dataclass(frozen=True)
class Published:
    """A registered version and the gate's decision on it."""

    version: ModelVersion
    decision: gate.Decision

    @property
    def promoted(self) -> bool:
        return self.decision.promoted

    @property
    def reason(self) -> str:
        return self.decision.reason


def _claim(
    *,
    session: Session,
    target: Target,
    candidate: Candidate,
    staging: Path,
    version: int,
    activate: bool,
) -> ModelVersion | None:
    """Register the staged folder as ``version`` and give it its final name (committed); None when the
    number is taken. With ``activate`` it becomes the active version in the same transaction."""
    candidate.write_extras(staging, version)
    write_manifest(staging)
    if not target.store.is_local:
        return _claim_in_store(
            session=session, target=target, candidate=candidate, staging=staging, version=version,
            activate=activate,
        )  # fmt: skip
    final = target.artifacts_dir / f"v{version}"
    row = _register(session=session, candidate=candidate, version=version, path=str(final))
    if row is None:
        return None
    if final.exists():
        # Left by a publish that crashed before its commit: our row now owns the number.
        shutil.rmtree(final)
    staging.rename(final)
    try:
        if activate:
            service.activate(session=session, version=version)
        session.commit()
    except Exception:
        session.rollback()
        final.rename(staging)
        raise
    return row


def _claim_in_store(
    *, session: Session, target: Target, candidate: Candidate, staging: Path, version: int, activate: bool
) -> ModelVersion | None:
    """The object-store publish: the row claims N, every file and then the manifest are stored, and
    only then is the row committed, so no node can see a version whose objects are incomplete."""
    uri = version_uri(target.store, version, sha256_file(staging / MANIFEST))
    row = _register(session=session, candidate=candidate, version=version, path=uri)
    if row is None:
        return None
    try:
        upload_version(store=target.store, folder=staging, version=version)
        # This node has the files already: its cache gets them without a download.
        add_to_cache(cache_dir=target.cache_dir, folder=staging, manifest_sha256=uri.rsplit("=", 1)[-1])
        if activate:
            service.activate(session=session, version=version, settings=target.settings)
        session.commit()
    except Exception:
        # Objects already stored under the number stay until the next claim of it replaces them:
        # nothing names them.
        session.rollback()
        raise
    return row


def _register(*, session: Session, candidate: Candidate, version: int, path: str) -> ModelVersion | None:
    """Insert (flush) the version's row: None, rolled back, when another publisher has the number."""
    try:
        return service.register_version(
            session=session,
            version=version,
            path=path,
            base_model=candidate.base_model,
            data_hash=candidate.data_hash,
            data_ref=candidate.data_ref,
            params=candidate.params,
            metrics=candidate.metrics,
            labels=candidate.labels,
            val_f1=candidate.val_f1,
            test_f1=candidate.test_f1,
            training_run_id=candidate.training_run_id,
        )
    except IntegrityError:
        session.rollback()
        return None


def _staged(target: Target, candidate: Candidate) -> Path:
    target.staging_root.mkdir(parents=True, exist_ok=True)
    staging = target.staging_root / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(candidate.model_dir, staging)
    return staging


def publish_version(
    *, session: Session, artifacts_dir: Path, candidate: Candidate, settings: Settings | None = None
) -> ModelVersion:
    """Copy the candidate's folder to ``artifacts_dir/v<N>`` (or into the artifact store that
    NER_ARTIFACTS_URL of ``settings`` names) and register version N (committed).

    The row is inserted (and flushed) first, which claims N: a concurrent publisher blocks on it or
    fails and retries with N+1. Only then does the complete folder (manifest included) get its final
    name (or is stored, manifest last), and the commit follows, so a reader never sees a half-written
    version.
    """
    target = target_for(artifacts_dir, settings)
    staging = _staged(target, candidate)
    try:
        for _ in range(PUBLISH_ATTEMPTS):
            version = service.next_version_number(session=session)
            row = _claim(
                session=session, target=target, candidate=candidate, staging=staging,
                version=version, activate=False,
            )  # fmt: skip
            if row is not None:
                return row
            log.info("version %s was taken by another run; retrying", version)
        raise RuntimeError(f"could not publish after {PUBLISH_ATTEMPTS} attempts")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def publish_active_as(
    *,
    session: Session,
    artifacts_dir: Path,
    candidate: Candidate,
    version: int,
    settings: Settings | None = None,
) -> ModelVersion | None:
    """Publish the candidate as exactly ``version`` and activate it, atomically (committed).

    None, with nothing changed, when another process registered that number first: of two processes
    seeding an empty registry at once, one wins and the other sees its version.
    """
    target = target_for(artifacts_dir, settings)
    staging = _staged(target, candidate)
    try:
        return _claim(
            session=session, target=target, candidate=candidate, staging=staging,
            version=version, activate=True,
        )  # fmt: skip
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def publish_and_gate(
    *,
    session: Session,
    artifacts_dir: Path,
    candidate: Candidate,
    policy: str,
    redis_url: str,
    gate_set: gate.GateSet | None = None,
    type_margin: float = 0.02,
    default_base_model: str | None = None,
    settings: Settings | None = None,
) -> Published:
    """Publish the candidate, judge it on the gate set, store the decision, promote when it passes.

    ``gate_set`` is the operator's data with the trainer's engine scorer; ``default_base_model`` is
    the one a run may use and still be promoted automatically (``NER_BASE_MODEL``).
    """
    row = publish_version(
        session=session, artifacts_dir=artifacts_dir, candidate=candidate, settings=settings
    )
    decision = gate.decide(
        session=session,
        candidate=row,
        policy=policy,
        gate_set=gate_set,
        type_margin=type_margin,
        default_base_model=default_base_model,
        promote_first=settings is not None and settings.gate_promote_first,
    )
    gate.record(candidate=row, decision=decision)
    session.commit()  # the decision (and the active version's cached gate score) before activation
    if decision.promoted:
        service.promote(session=session, version=row.version, redis_url=redis_url, settings=settings)
    log.info("published version %s; %s (%s)", row.version, decision.decision, decision.reason)
    return Published(version=row, decision=decision)
