"""Request and response bodies of the public API (pydantic), with the examples shown at /docs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."
_GOOGLE_ENTITIES = [
    {"word": "Google", "entity_group": "ORG", "score": 0.998, "start": 0, "end": 6},
    {"word": "Larry Page", "entity_group": "PER", "score": 0.999, "start": 22, "end": 32},
    {"word": "Sergey Brin", "entity_group": "PER", "score": 0.999, "start": 37, "end": 48},
    {"word": "California", "entity_group": "LOC", "score": 0.999, "start": 52, "end": 62},
]


# --- predict ---------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """One text. Longer than NER_PREDICT_MAX_CHARS: 413 (use a bulk job instead)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": _GOOGLE}]})

    text: str = Field(
        min_length=1, description="The text to analyse; any Unicode, any length up to the limit."
    )


class BatchPredictRequest(BaseModel):
    """Several texts answered together, one result per text in order."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": [_GOOGLE, "Kofi Annan visited Nairobi on Monday."]}]}
    )

    texts: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        description="Up to NER_PREDICT_BATCH_MAX_TEXTS non-empty texts, each within NER_PREDICT_MAX_CHARS.",
    )


class EntityOut(BaseModel):
    """One entity: ``word`` is exactly ``text[start:end]`` of the caller's text."""

    word: str = Field(description="The caller's own characters, text[start:end].")
    entity_group: str = Field(description="Entity type, e.g. PER, ORG, LOC, MISC.")
    score: float = Field(description="Mean probability of the entity's words (first sub-token of each).")
    start: int = Field(description="Character offset of the first character (Python string index).")
    end: int = Field(description="Character offset one past the last character.")


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"entities": _GOOGLE_ENTITIES, "model_version": 3}]}
    )

    entities: list[EntityOut]
    model_version: int | None = Field(
        description="The registry version that answered; null while serving NER_MODEL."
    )


class TextEntities(BaseModel):
    entities: list[EntityOut]


class BatchPredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {"entities": _GOOGLE_ENTITIES},
                        {
                            "entities": [
                                {
                                    "word": "Kofi Annan",
                                    "entity_group": "PER",
                                    "score": 0.999,
                                    "start": 0,
                                    "end": 10,
                                },
                                {
                                    "word": "Nairobi",
                                    "entity_group": "LOC",
                                    "score": 0.998,
                                    "start": 19,
                                    "end": 26,
                                },
                            ]
                        },
                    ],
                    "model_version": 3,
                }
            ]
        }
    )

    results: list[TextEntities] = Field(description="One result per text, in the order given.")
    model_version: int | None = Field(
        description="The registry version that answered; null while serving NER_MODEL."
    )


# --- training runs and model versions ------------------------------------------------------------
# Hyperparameters left out (null) take the default recipe of trainer.params.TrainParams.

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


class TrainData(BaseModel):
    """Data references: files or folders under NER_DATA_ROOTS (absolute, or relative to a root,
    e.g. what POST /train/uploads returned), or a Hugging Face dataset id."""

    model_config = ConfigDict(extra="forbid")

    train: str = Field(
        min_length=1, description="CoNLL or JSONL file, a folder with split files, or a hub id."
    )
    validation: str | None = Field(default=None, description="Default: a seeded split of train.")
    test: str | None = Field(default=None, description="Scored per entity type at the end.")


class TrainRequest(BaseModel):
    """A training run. Unknown fields are refused (422), so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_TRAIN_EXAMPLE]})

    data: TrainData | str = Field(description="Splits by reference, or one folder / hub id holding them all.")
    base_model: str | None = Field(
        default=None, description="Hub id or local folder to start from (default NER_BASE_MODEL)."
    )
    epochs: int | None = Field(default=None, ge=1, le=100)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    max_length: int | None = Field(default=None, ge=8, le=512, description="Sub-tokens per sentence.")
    warmup_ratio: float | None = Field(default=None, ge=0, lt=1)
    weight_decay: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = Field(default=None, ge=0)
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
    path: str = Field(description="Where the file was stored; use it as a data reference in POST /train.")
    bytes: int
    sha256: str


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
