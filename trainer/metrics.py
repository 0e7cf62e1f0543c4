"""Evaluation: seqeval entity-level scores, token accuracy, per-type scores, confusion matrix, tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

from trainer.losses import IGNORE_INDEX


@dataclass
class EpochMetrics:
    """One row of the per-epoch table (and of ``training_epochs``)."""

    epoch: int
    train_loss: float | None
    val_loss: float | None
    precision: float
    recall: float
    f1: float
    accuracy: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_tag_sequences(
    predictions: np.ndarray, label_ids: np.ndarray, id2label: Mapping[int, str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tags per sentence, over the labelled positions (first sub-token of a word)."""
    gold: list[list[str]] = []
    pred: list[list[str]] = []
    for sentence_pred, sentence_gold in zip(predictions, label_ids, strict=True):
        mask = sentence_gold != IGNORE_INDEX
        gold.append([id2label[int(i)] for i in sentence_gold[mask]])
        pred.append([id2label[int(i)] for i in sentence_pred[mask]])
    return gold, pred


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall, F1 (seqeval, conlleval convention) and token accuracy."""
    return {
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "accuracy": float(accuracy_score(gold, pred)) if any(gold) else 0.0,
    }


def confusion_matrix(gold: list[list[str]], pred: list[list[str]], labels: Sequence[str]) -> dict[str, Any]:
    """Word-level confusion matrix: rows are gold labels, columns predicted labels."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for gold_tags, pred_tags in zip(gold, pred, strict=True):
        for g, p in zip(gold_tags, pred_tags, strict=True):
            matrix[index[g], index[p]] += 1
    return {"labels": list(labels), "matrix": matrix.tolist()}


def per_type_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support per entity type (seqeval, IOB2), JSON-ready."""
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    return {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in report.items()
        if not name.endswith(" avg")
    }


def detailed_report(gold: list[list[str]], pred: list[list[str]], labels: Sequence[str]) -> dict[str, Any]:
    """Overall scores, scores per entity type and the confusion matrix, JSON-ready."""
    return {
        **entity_scores(gold, pred),
        "per_type": per_type_scores(gold, pred),
        "confusion": confusion_matrix(gold, pred, labels),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def format_epoch_table(rows: Iterable[EpochMetrics]) -> str:
    """The per-epoch table as the prototype printed it (the Hugging Face notebook layout)."""
    header = ["Epoch", "Training Loss", "Validation Loss", "Precision", "Recall", "F1", "Accuracy"]
    body = [
        [
            str(row.epoch),
            _fmt(row.train_loss),
            _fmt(row.val_loss),
            _fmt(row.precision),
            _fmt(row.recall),
            _fmt(row.f1),
            _fmt(row.accuracy),
        ]
        for row in rows
    ]
    return _table(header, body)


def format_per_type(report: Mapping[str, Any], title: str) -> str:
    """Per-entity-type precision / recall / F1 / support of a detailed report."""
    header = [title, "Precision", "Recall", "F1", "Support"]
    body = [
        [name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"])]
        for name, row in sorted(report["per_type"].items())
    ]
    body.append(
        ["overall", f"{report['precision']:.4f}", f"{report['recall']:.4f}", f"{report['f1']:.4f}", ""]
    )
    return _table(header, body)


def format_confusion(confusion: Mapping[str, Any]) -> str:
    labels = confusion["labels"]
    header = ["gold \\ predicted", *labels]
    body = [[gold, *(str(n) for n in row)] for gold, row in zip(labels, confusion["matrix"], strict=True)]
    return _table(header, body)


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header]
    ]
    lines.append("-+-".join("-" * width for width in widths))
    lines += [" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)
