"""Response bodies of the registry API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from shared.core.tables import ModelVersion, VersionStatus


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
    )


def version_detail(row: ModelVersion) -> ModelVersionDetail:
    return ModelVersionDetail(
        **version_view(row).model_dump(), path=row.path, params=row.params or {}, metrics=row.metrics or {}
    )


def version_list(rows: list[ModelVersion]) -> ModelVersionList:
    active = next((row.version for row in rows if row.status == VersionStatus.active), None)
    return ModelVersionList(active=active, versions=[version_view(row) for row in rows])
