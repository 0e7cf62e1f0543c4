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

from shared.core.tables import ModelVersion
from shared.registry import gate, service
from shared.registry.manifest import write_manifest

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
class Published:
    """A registered version and the gate's decision on it."""

    version: ModelVersion
    promoted: bool
    reason: str


def publish_version(*, session: Session, artifacts_dir: Path, candidate: Candidate) -> ModelVersion:
    """Copy the candidate's folder to ``artifacts_dir/v<N>`` and register version N (committed).

    The row is inserted (and flushed) first, which claims N: a concurrent publisher blocks on it or
    fails and retries with N+1. Only then does the complete folder (manifest included) get its final
    name, and the commit follows, so a reader never sees a half-written version.
    """
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    staging = artifacts_dir / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(candidate.model_dir, staging)
    try:
        for _ in range(PUBLISH_ATTEMPTS):
            version = service.next_version_number(session=session)
            final = artifacts_dir / f"v{version}"
            candidate.write_extras(staging, version)
            write_manifest(staging)
            try:
                row = service.register_version(
                    session=session,
                    version=version,
                    path=str(final),
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
                log.info("version %s was taken by another run; retrying", version)
                continue
            if final.exists():
                # Left by a publish that crashed before its commit: our row now owns the number.
                shutil.rmtree(final)
            staging.rename(final)
            try:
                session.commit()
            except Exception:
                session.rollback()
                final.rename(staging)
                raise
            return row
        raise RuntimeError(f"could not publish after {PUBLISH_ATTEMPTS} attempts")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def publish_and_gate(
    *, session: Session, artifacts_dir: Path, candidate: Candidate, policy: str, redis_url: str
) -> Published:
    """Publish the candidate, then promote it (activate, commit, announce) when the gate says so."""
    row = publish_version(session=session, artifacts_dir=artifacts_dir, candidate=candidate)
    promoted, reason = gate.decide(session=session, candidate=row, policy=policy)
    if promoted:
        service.promote(session=session, version=row.version, redis_url=redis_url)
    log.info("published version %s; promoted=%s (%s)", row.version, promoted, reason)
    return Published(version=row, promoted=promoted, reason=reason)
