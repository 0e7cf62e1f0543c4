"""What a finished run leaves beside its weights (metrics.json, the model card) and hands the registry."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.predict import casing
from shared.registry.publish import Candidate
from shared.training.params import TrainParams
from trainer.data import LoadedData
from trainer.metrics import format_confusion, format_epoch_table, format_per_type
from trainer.training import TrainResult

METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"


def metrics_document(result: TrainResult) -> dict[str, Any]:
    """Everything measured in a run, JSON-ready (written as metrics.json and stored on the version)."""
    return {
        "epochs": [row.as_dict() for row in result.epochs],
        "best_epoch": result.best_epoch,
        "validation": result.validation,
        "test": result.test,
        "train_seconds": round(result.train_seconds, 2),
        "train_tokens": result.train_tokens,
        "tokens_per_second": round(result.tokens_per_second, 1),
    }


def model_card(
    *, result: TrainResult, base_model: str, data: LoadedData, params: TrainParams, version: int | None
) -> str:
    """A model card: what it was trained from and on, how, and how well it scores."""
    title = f"NER model version {version}" if version is not None else "NER model"
    lines = [
        f"# {title}",
        "",
        f"Token-classification model trained {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by the NER service.",
        "",
        "## Training",
        "",
        f"- Base model: `{base_model}`",
        f"- Data hash (sha256): `{data.data_hash}`",
        *(
            f"- {key.capitalize()} data: `{source}` ({data.sentences(key)} sentences)"
            for key, source in data.sources.items()
        ),
        f"- Labels: {', '.join(result.labels)}",
        f"- Hyperparameters: `{json.dumps(params.as_dict(), sort_keys=True)}`",
        f"- Kept epoch (best validation F1): {result.best_epoch}",
        f"- Training time: {result.train_seconds:.0f} s, {result.tokens_per_second:.0f} tokens/s",
        "",
        "## Per-epoch metrics",
        "",
        "```",
        format_epoch_table(result.epochs),
        "```",
    ]
    for name, report in (("Validation", result.validation), ("Test", result.test)):
        if report:
            lines += [
                "",
                f"## {name} scores (entity level, seqeval)",
                "",
                "```",
                format_per_type(report, name),
                "```",
            ]
    if result.test:
        lines += [
            "",
            "## Test confusion matrix (words)",
            "",
            "```",
            format_confusion(result.test["confusion"]),
            "```",
        ]
    lines += ["", "## Use", ""]
    if result.case_feature:
        lines += [
            "The encoder is uncased; this model also reads each token's letter case through its",
            f'token-type ids (config `"{casing.CONFIG_KEY}": "{casing.CONFIG_VALUE}"`). It loads with',
            "`AutoModelForTokenClassification.from_pretrained(folder)`; pass",
            "`token_type_ids = shared.predict.casing.case_type_ids(text, offsets)` for full accuracy",
            "(all-zero ids mean lower case everywhere).",
        ]
    else:
        lines += ["Loads with `AutoModelForTokenClassification.from_pretrained(folder)`."]
    return "\n".join(lines) + "\n"


def write_model_folder_extras(
    folder: Path,
    *,
    result: TrainResult,
    base_model: str,
    data: LoadedData,
    params: TrainParams,
    version: int | None,
) -> None:
    """Add metrics.json and the model card to a saved model folder."""
    document = {
        **metrics_document(result),
        "base_model": base_model,
        "data_hash": data.data_hash,
        "data": data.sources,
        "params": params.as_dict(),
        "labels": result.labels,
        "version": version,
    }
    (folder / METRICS_FILE).write_text(json.dumps(document, indent=2))
    card = model_card(result=result, base_model=base_model, data=data, params=params, version=version)
    (folder / CARD_FILE).write_text(card)


def candidate(
    *,
    result: TrainResult,
    base_model: str,
    data: LoadedData,
    params: TrainParams,
    training_run_id: uuid.UUID | None = None,
) -> Candidate:
    """What the registry publishes for a finished run: its folder, scores and model card."""
    if result.model_dir is None:
        raise ValueError("the run has no model folder to publish")
    return Candidate(
        model_dir=result.model_dir,
        base_model=base_model,
        data_hash=data.data_hash,
        data_ref=data.sources,
        params=params.as_dict(),
        metrics=metrics_document(result),
        labels=result.labels,
        val_f1=result.validation.get("f1"),
        test_f1=(result.test or {}).get("f1"),
        training_run_id=training_run_id,
        write_extras=lambda folder, version: write_model_folder_extras(
            folder, result=result, base_model=base_model, data=data, params=params, version=version
        ),
    )
