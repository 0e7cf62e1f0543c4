"""Token-classification losses, chosen by name: ``ce``, ``weighted_ce``, ``focal``, ``mom``.

Each loss takes logits ``(batch, tokens, labels)`` and label ids ``(batch, tokens)`` where
``IGNORE_INDEX`` marks positions that carry no label (special tokens, padding, later sub-tokens of a
word) and returns the mean over labelled tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.training.params import LOSSES

IGNORE_INDEX = -100

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"
    focal_gamma: float = 2.0
    mom_lambda: float = 1.0
    label_smoothing: float = 0.0


def _flat(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The loss is computed in float32 even when the forward pass ran under bf16 autocast.
    return logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)


def _mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # A batch without labelled tokens gives 0, not NaN (0/0), so it cannot poison the weights.
    return (values * weights).sum() / weights.sum().clamp(min=1e-12)


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    """Plain cross-entropy over labelled tokens."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_labels = _flat(logits, labels)
        per_token = F.cross_entropy(
            flat_logits,
            flat_labels,
            ignore_index=IGNORE_INDEX,
            label_smoothing=label_smoothing,
            reduction="none",
        )
        return _mean(per_token, (flat_labels != IGNORE_INDEX).float())

    return loss


def inverse_frequency_weights(counts: Sequence[int]) -> torch.Tensor:
    """Class weights ``total / (classes * count)``: 1 for a class of average frequency.

    A label that never occurs in training gets weight 1; no token will ever be weighted by it.
    """
    counts_t = torch.tensor(counts, dtype=torch.float32)
    present = counts_t > 0
    weights = torch.ones_like(counts_t)
    weights[present] = counts_t[present].sum() / (present.sum() * counts_t[present])
    return weights


def weighted_cross_entropy(weights: torch.Tensor, label_smoothing: float = 0.0) -> LossFn:
    """Cross-entropy with class weights (rare entity labels count more than O), as torch weighs it:
    the weighted sum over tokens divided by the sum of their weights."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_labels = _flat(logits, labels)
        class_weights = weights.to(flat_logits.device)
        per_token = F.cross_entropy(
            flat_logits,
            flat_labels,
            weight=class_weights,
            ignore_index=IGNORE_INDEX,
            label_smoothing=label_smoothing,
            reduction="none",
        )
        labelled = flat_labels != IGNORE_INDEX
        token_weights = torch.where(labelled, class_weights[flat_labels.clamp(min=0)], 0.0)
        # per_token already carries each token's weight; divide by their sum.
        return per_token.sum() / token_weights.sum().clamp(min=1e-12)

    return loss


def focal(gamma: float) -> LossFn:
    """Focal loss (Lin et al. 2017): ``-(1 - p_t)^gamma * log p_t``, down-weighting easy tokens."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_labels = _flat(logits, labels)
        mask = flat_labels != IGNORE_INDEX
        if not mask.any():
            return flat_logits.sum() * 0.0
        log_probs = F.log_softmax(flat_logits[mask], dim=-1)
        log_pt = log_probs.gather(1, flat_labels[mask].unsqueeze(1)).squeeze(1)
        return (-((1.0 - log_pt.exp()) ** gamma) * log_pt).mean()

    return loss


def majority_or_minority(o_id: int, lam: float, label_smoothing: float = 0.0) -> LossFn:
    """MoM learning (Nemoto et al., IEEE Access 2024): CE + lambda * CE over tokens whose gold is O.

    The extra term penalises false positives on the majority class, which tends to raise precision
    on entity-sparse text without down-weighting the entities themselves.
    """

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat_logits, flat_labels = _flat(logits, labels)
        per_token = F.cross_entropy(
            flat_logits,
            flat_labels,
            ignore_index=IGNORE_INDEX,
            reduction="none",
            label_smoothing=label_smoothing,
        )
        labelled = flat_labels != IGNORE_INDEX
        majority = flat_labels == o_id
        base = per_token[labelled].sum() / labelled.sum().clamp(min=1)
        o_term = per_token[majority].sum() / majority.sum().clamp(min=1)
        return base + lam * o_term

    return loss


def make_loss(config: LossConfig, *, labels: Sequence[str], label_counts: Mapping[str, int]) -> LossFn:
    """The loss function ``config.name`` names, set up for this label set and training data."""
    if config.name == "ce":
        return cross_entropy(config.label_smoothing)
    if config.name == "weighted_ce":
        weights = inverse_frequency_weights([label_counts.get(label, 0) for label in labels])
        return weighted_cross_entropy(weights, config.label_smoothing)
    if config.name == "focal":
        return focal(config.focal_gamma)
    if config.name == "mom":
        return majority_or_minority(labels.index("O"), config.mom_lambda, config.label_smoothing)
    raise ValueError(f"unknown loss {config.name!r}; choose one of {', '.join(LOSSES)}")
