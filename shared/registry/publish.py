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
    artifacts_dir: Path,
    candidate: Candidate,
    staging: Path,
    version: int,
    activate: bool,
) -> ModelVersion | None:
    """Register the staged folder as ``version`` and give it its final name (committed); None when the
    number is taken. With ``activate`` it becomes the active version in the same transaction."""
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


def _staged(artifacts_dir: Path, candidate: Candidate) -> Path:
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    staging = artifacts_dir / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(candidate.model_dir, staging)
    return staging


def publish_version(*, session: Session, artifacts_dir: Path, candidate: Candidate) -> ModelVersion:
    """Copy the candidate's folder to ``artifacts_dir/v<N>`` and register version N (committed).

    The row is inserted (and flushed) first, which claims N: a concurrent publisher blocks on it or
    fails and retries with N+1. Only then does the complete folder (manifest included) get its final
    name, and the commit follows, so a reader never sees a half-written version.
    """
    staging = _staged(artifacts_dir, candidate)
    try:
        for _ in range(PUBLISH_ATTEMPTS):
            version = service.next_version_number(session=session)
            row = _claim(
                session=session, artifacts_dir=artifacts_dir, candidate=candidate, staging=staging,
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
    *, session: Session, artifacts_dir: Path, candidate: Candidate, version: int
) -> ModelVersion | None:
    """Publish the candidate as exactly ``version`` and activate it, atomically (committed).

    None, with nothing changed, when another process registered that number first: of two processes
    seeding an empty registry at once, one wins and the other sees its version.
    """
    staging = _staged(artifacts_dir, candidate)
    try:
        return _claim(
            session=session, artifacts_dir=artifacts_dir, candidate=candidate, staging=staging,
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
) -> Published:
    """Publish the candidate, judge it on the gate set, store the decision, promote when it passes.

    ``gate_set`` is the operator's data with the trainer's engine scorer; ``default_base_model`` is
    the one a run may use and still be promoted automatically (``NER_BASE_MODEL``).
    """
    row = publish_version(session=session, artifacts_dir=artifacts_dir, candidate=candidate)
    decision = gate.decide(
        session=session,
        candidate=row,
        policy=policy,
        gate_set=gate_set,
        type_margin=type_margin,
        default_base_model=default_base_model,
    )
    gate.record(candidate=row, decision=decision)
    session.commit()  # the decision (and the active version's cached gate score) before activation
    if decision.promoted:
        service.promote(session=session, version=row.version, redis_url=redis_url)
    log.info("published version %s; %s (%s)", row.version, decision.decision, decision.reason)
    return Published(version=row, decision=decision)
