"""Request and response bodies of the training API, with the examples shown at /docs."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.core.tables import TrainingRun
from shared.training.status import eta_seconds, progress

_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")

# Hyperparameters left out (null) take the default recipe of shared.training.params.TrainParams.

_TRAIN_EXAMPLE = {
    "data": {
        "train": "conll2003/eng.train",
        "validation": "conll2003/eng.testa",
        "test": "conll2003/eng.testb",
    },
    "epochs": 3,
    "learning_rate": 5e-5,
    "batch_size": 16,
    "loss": "mom",
}


def _plain_text(value: str | None) -> str | None:
    # A NUL or a lone surrogate is valid JSON but no path, id or database text: refuse by name.
    if value is not None and _NOT_TEXT.search(value):
        raise ValueError("contains a NUL character or a lone surrogate")
    return value


PlainStr = Annotated[str, AfterValidator(_plain_text)]


class TrainData(BaseModel):
    """Data references: an upload (``upload:<id>/<name>``, the ``reference`` POST /train/uploads
    returned, usable through any gateway), files or folders under NER_DATA_ROOTS (absolute, or
    relative to a root), or a Hugging Face dataset id (``owner/name``)."""

    model_config = ConfigDict(extra="forbid")

    train: PlainStr = Field(
        min_length=1,
        description="An upload (upload:<id>/<name>), a CoNLL or JSONL file, a folder with split files, "
        "or a hub id.",
    )
    validation: PlainStr | None = Field(default=None, description="Default: a seeded split of train.")
    test: PlainStr | None = Field(default=None, description="Scored per entity type at the end.")


class TrainRequest(BaseModel):
    """A training run. Unknown fields are refused (422), so a typo is not silently ignored."""

    # NaN and Infinity are not numbers a run can use: 422, never stored.
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [_TRAIN_EXAMPLE]}
    )

    data: TrainData | PlainStr = Field(
        description="Splits by reference, or one folder / hub id holding them all."
    )
    base_model: PlainStr | None = Field(
        default=None,
        description="Hub id or local folder to start from (default NER_BASE_MODEL); other than the "
        "default only for admin keys or ids on NER_BASE_MODEL_ALLOW.",
    )
    epochs: int | None = Field(default=None, ge=1, le=100)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    max_length: int | None = Field(default=None, ge=8, le=512, description="Sub-tokens per sentence.")
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    weight_decay: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    loss: Literal["ce", "weighted_ce", "focal", "mom"] | None = Field(
        default=None, description="Default NER_TRAIN_LOSS."
    )
    focal_gamma: float | None = Field(default=None, ge=0, le=10)
    mom_lambda: float | None = Field(default=None, ge=0, le=100)
    label_smoothing: float | None = Field(default=None, ge=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] | None = None
    case_feature: bool | None = Field(
        default=None, description="Feed word case to uncased encoders via token-type ids (default on)."
    )
    validation_fraction: float | None = Field(default=None, gt=0, lt=1)


class TrainAccepted(BaseModel):
    run_id: uuid.UUID
    status: str = Field(description="Always 'queued'.")
    status_url: str


class EpochOut(BaseModel):
    epoch: int
    train_loss: float | None
    val_loss: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    accuracy: float | None


class TrainRunOut(BaseModel):
    run_id: uuid.UUID
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    step: int
    total_steps: int
    progress: float = Field(description="Fraction of the optimizer steps done.")
    eta_seconds: float | None = Field(description="Estimated seconds left while running.")
    epochs: list[EpochOut]
    error: str | None = Field(description="Why the run failed (file and line for bad data).")
    model_version: int | None = Field(description="The version published when the run succeeded.")
    promoted: bool | None = Field(description="Whether the gate made that version active.")
    test_metrics: dict[str, Any] = Field(description="Test scores per entity type and confusion matrix.")
    params: dict[str, Any]
    data: dict[str, Any]
    base_model: str
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrainRunList(BaseModel):
    runs: list[TrainRunOut]


class UploadOut(BaseModel):
    path: str = Field(
        description="Where the file was stored on the host that received it (a data reference there)."
    )
    reference: str = Field(
        description="upload:<id>/<name>: the data reference for POST /train through any gateway host."
    )
    bytes: int
    sha256: str
    filename: str | None = Field(default=None, description="The file's name as sent (shown, never a path)")


def run_view(run: TrainingRun) -> TrainRunOut:
    """A run as the API shows it (parameters starting with ``_`` are the worker's bookkeeping)."""
    params = {k: v for k, v in (run.params or {}).items() if not k.startswith("_")}
    return TrainRunOut(
        run_id=run.id,
        status=run.status.value,
        step=run.step,
        total_steps=run.total_steps,
        progress=round(progress(run), 4),
        eta_seconds=eta_seconds(run),
        epochs=[EpochOut.model_validate(epoch, from_attributes=True) for epoch in run.epochs],
        error=run.error,
        model_version=run.model_version,
        promoted=run.promoted,
        test_metrics=run.test_metrics or {},
        params=params,
        data=run.data or {},
        base_model=run.base_model,
        cancel_requested=run.cancel_requested,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )
