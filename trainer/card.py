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


EngineScores = dict[str, dict[str, Any]]  # trainer.evaluation.engine_reports: split -> mode -> report
MODES = (("sentences", "one sentence per text"), ("documents", "whole documents"))


def metrics_document(result: TrainResult, engine_scores: EngineScores | None = None) -> dict[str, Any]:
    """Everything measured in a run, JSON-ready (written as metrics.json and stored on the version).

    ``validation`` and ``test`` are the training loop's scores (on the labelled sub-tokens, used to
    pick the epoch); ``engine`` holds the same splits scored through the engine, as users get them.
    """
    return {
        "epochs": [row.as_dict() for row in result.epochs],
        "best_epoch": result.best_epoch,
        "validation": result.validation,
        "test": result.test,
        "engine": engine_scores or {},
        "train_seconds": round(result.train_seconds, 2),
        "train_tokens": result.train_tokens,
        "tokens_per_second": round(result.tokens_per_second, 1),
    }


def model_card(
    *,
    result: TrainResult,
    base_model: str,
    data: LoadedData,
    params: TrainParams,
    version: int | None,
    engine_scores: EngineScores | None = None,
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
    for split, splits_report in (engine_scores or {}).items():
        for mode, how in MODES:
            report = splits_report.get(mode)
            if report:
                lines += [
                    "",
                    f"## {split.capitalize()} scores through the engine, {how} (entity level, seqeval)",
                    "",
                    "Raw text as users send it (tokens joined by spaces"
                    + (", sentences by newlines" if mode == "documents" else "")
                    + "), the engine's character spans mapped back onto the tokens.",
                    "",
                    "```",
                    format_per_type(report, split.capitalize()),
                    "```",
                ]
    for name, report in (("Validation", result.validation), ("Test", result.test)):
        if report:
            lines += [
                "",
                f"## {name} scores of the training loop (entity level, seqeval)",
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
    engine_scores: EngineScores | None = None,
) -> None:
    """Add metrics.json and the model card to a saved model folder."""
    document = {
        **metrics_document(result, engine_scores),
        "base_model": base_model,
        "data_hash": data.data_hash,
        "data": data.sources,
        "params": params.as_dict(),
        "labels": result.labels,
        "version": version,
    }
    (folder / METRICS_FILE).write_text(json.dumps(document, indent=2))
    card = model_card(
        result=result,
        base_model=base_model,
        data=data,
        params=params,
        version=version,
        engine_scores=engine_scores,
    )
    (folder / CARD_FILE).write_text(card)


def candidate(
    *,
    result: TrainResult,
    base_model: str,
    data: LoadedData,
    params: TrainParams,
    training_run_id: uuid.UUID | None = None,
    engine_scores: EngineScores | None = None,
) -> Candidate:
    """What the registry publishes for a finished run: its folder, scores and model card.

    The version's validation and test F1 are the engine's (one sentence per text) when measured,
    else the training loop's.
    """
    if result.model_dir is None:
        raise ValueError("the run has no model folder to publish")
    return Candidate(
        model_dir=result.model_dir,
        base_model=base_model,
        data_hash=data.data_hash,
        data_ref=data.sources,
        params=params.as_dict(),
        metrics=metrics_document(result, engine_scores),
        labels=result.labels,
        val_f1=_engine_f1(engine_scores, "validation", result.validation),
        test_f1=_engine_f1(engine_scores, "test", result.test),
        training_run_id=training_run_id,
        write_extras=lambda folder, version: write_model_folder_extras(
            folder,
            result=result,
            base_model=base_model,
            data=data,
            params=params,
            version=version,
            engine_scores=engine_scores,
        ),
    )


def _engine_f1(engine_scores: EngineScores | None, split: str, loop: dict[str, Any] | None) -> float | None:
    sentences = (engine_scores or {}).get(split, {}).get("sentences")
    if sentences is not None:
        return sentences["f1"]
    return (loop or {}).get("f1")
