"""Publishing a finished run: model folder with metrics and model card, then version N+1 in the registry."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import casing, registry
from shared.models import ModelVersion
from trainer.data import LoadedData
from trainer.metrics import format_confusion, format_epoch_table, format_per_type
from trainer.params import TrainParams
from trainer.training import TrainResult

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
PUBLISH_ATTEMPTS = 5


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
            "`token_type_ids = shared.casing.case_type_ids(text, offsets)` for full accuracy (all-zero ids",
            "mean lower case everywhere).",
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


def publish_version(
    *,
    session: Session,
    artifacts_dir: Path,
    result: TrainResult,
    base_model: str,
    data: LoadedData,
    params: TrainParams,
    training_run_id: uuid.UUID | None = None,
) -> ModelVersion:
    """Move the run's model folder to ``artifacts_dir/v<N>`` and register version N (committed).

    The row is inserted (and flushed) first, which claims N: a concurrent publisher blocks on it or
    fails and retries with N+1. Only then does the complete folder (manifest included) get its final
    name, and the commit follows, so a reader never sees a half-written version.
    """
    if result.model_dir is None:
        raise ValueError("the run has no model folder to publish")
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    staging = artifacts_dir / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(result.model_dir, staging)
    try:
        for _ in range(PUBLISH_ATTEMPTS):
            version = registry.next_version_number(session=session)
            final = artifacts_dir / f"v{version}"
            write_model_folder_extras(
                staging, result=result, base_model=base_model, data=data, params=params, version=version
            )
            registry.write_manifest(staging)
            try:
                row = registry.register_version(
                    session=session,
                    version=version,
                    path=str(final),
                    base_model=base_model,
                    data_hash=data.data_hash,
                    data_ref=data.sources,
                    params=params.as_dict(),
                    metrics=metrics_document(result),
                    labels=result.labels,
                    val_f1=result.validation.get("f1"),
                    test_f1=(result.test or {}).get("f1"),
                    training_run_id=training_run_id,
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
