"""Response bodies of the registry API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.core.tables import ModelVersion, VersionStatus


class GateScore(BaseModel):
    """A version's entity-level score on the operator's gate set, measured through the engine."""

    version: int | None = Field(default=None, description="The version scored (the active one's number).")
    precision: float
    recall: float
    f1: float
    per_type: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Per entity type: precision, recall, f1, support."
    )
    sentences: int | None = Field(default=None, description="Sentences in the gate set.")


class GateOut(BaseModel):
    """The quality gate's decision on a version and the two scores it compared."""

    decision: str = Field(description="promoted, rejected (worse on the gate set) or held (for an admin).")
    reason: str
    candidate: GateScore | None = Field(description="This version's score on the gate set.")
    active: GateScore | None = Field(description="The then active version's score on the same gate set.")


class ModelVersionOut(BaseModel):
    version: int
    status: str = Field(description="candidate, active or retired.")
    base_model: str
    data_hash: str
    data_ref: dict[str, Any]
    labels: list[str]
    val_f1: float | None
    test_f1: float | None
    training_run_id: uuid.UUID | None
    created_at: datetime
    activated_at: datetime | None
    gate: GateOut | None = Field(default=None, description="The quality gate's decision; null before it ran.")
    load_error: str | None = Field(
        default=None, description="Why a gateway or worker could not load this version; null when it loads."
    )


class ModelVersionDetail(ModelVersionOut):
    path: str
    params: dict[str, Any]
    metrics: dict[str, Any] = Field(description="Per-epoch table, validation and test reports per type.")


class ModelVersionList(BaseModel):
    active: int | None
    versions: list[ModelVersionOut]


def version_view(row: ModelVersion) -> ModelVersionOut:
    return ModelVersionOut(
        version=row.version,
        status=row.status.value,
        base_model=row.base_model,
        data_hash=row.data_hash,
        data_ref=row.data_ref or {},
        labels=row.labels or [],
        val_f1=row.val_f1,
        test_f1=row.test_f1,
        training_run_id=row.training_run_id,
        created_at=row.created_at,
        activated_at=row.activated_at,
        gate=gate_view(row),
        load_error=row.load_error,
    )


def _score(report: dict[str, Any] | None) -> GateScore | None:
    if not report:
        return None
    per_type = {
        name: {key: row[key] for key in ("precision", "recall", "f1", "support") if key in row}
        for name, row in (report.get("per_type") or {}).items()
    }
    return GateScore(
        version=report.get("version"),
        precision=report["precision"],
        recall=report["recall"],
        f1=report["f1"],
        per_type=per_type,
        sentences=report.get("sentences"),
    )


def gate_view(row: ModelVersion) -> GateOut | None:
    """The gate's decision and both scores, as stored on the version (migration 0002)."""
    if row.gate_decision is None:
        return None
    own = _score(row.gate_score)
    if own is not None:
        own.version = row.version
    return GateOut(
        decision=row.gate_decision,
        reason=row.gate_reason or "",
        candidate=own,
        active=_score(row.gate_active_score),
    )


def version_detail(row: ModelVersion) -> ModelVersionDetail:
    return ModelVersionDetail(
        **version_view(row).model_dump(), path=row.path, params=row.params or {}, metrics=row.metrics or {}
    )


def version_list(rows: list[ModelVersion]) -> ModelVersionList:
    active = next((row.version for row in rows if row.status == VersionStatus.active), None)
    return ModelVersionList(active=active, versions=[version_view(row) for row in rows])


class ImportRequest(BaseModel):
    """``POST /models/import``: a model folder (inside the data folders) or a Hub id becomes a version."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"source": "dslim/bert-base-NER", "activate": False}]}
    )

    source: str = Field(
        min_length=1,
        max_length=1000,
        description="A model folder under NER_DATA_ROOTS or a Hugging Face model id (owner/name).",
    )
    activate: bool = Field(default=False, description="Make it the active version once registered.")
