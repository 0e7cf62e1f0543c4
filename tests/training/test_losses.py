"""The four losses against their definitions, computed independently here."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import IGNORE_INDEX, LossConfig, inverse_frequency_weights, make_loss

LABELS = ["O", "B-PER", "I-PER"]


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3)
    labels = torch.tensor([[IGNORE_INDEX, 0, 1, 2, IGNORE_INDEX], [IGNORE_INDEX, 0, 0, 1, IGNORE_INDEX]])
    return logits, labels


def _token_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, float, float]]:
    """(gold, -log p_gold, p_gold) for every labelled token, by hand."""
    out = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        for token_logits, gold in zip(row_logits, row_labels, strict=True):
            if gold == IGNORE_INDEX:
                continue
            probs = torch.softmax(token_logits, dim=-1)
            out.append((int(gold), -math.log(float(probs[gold])), float(probs[gold])))
    return out


def _loss(name: str, **kwargs: float) -> object:
    counts = {"O": 6, "B-PER": 3, "I-PER": 1}
    return make_loss(LossConfig(name=name, **kwargs), labels=LABELS, label_counts=counts)


def test_ce_is_the_mean_over_labelled_tokens(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    nll = [n for _, n, _ in _token_nll(logits, labels)]
    assert float(_loss("ce")(logits, labels)) == pytest.approx(sum(nll) / len(nll), rel=1e-5)


def test_weighted_ce_weights_by_inverse_frequency(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    weights = inverse_frequency_weights([6, 3, 1])
    # total / (classes * count): the rarest label weighs most, an average one 1.
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert inverse_frequency_weights([4, 0, 4]).tolist() == pytest.approx([1.0, 1.0, 1.0])
    logits, labels = batch
    tokens = _token_nll(logits, labels)
    w = weights.tolist()
    expected = sum(w[g] * n for g, n, _ in tokens) / sum(w[g] for g, _, _ in tokens)
    assert float(_loss("weighted_ce")(logits, labels)) == pytest.approx(expected, rel=1e-5)


def test_focal_down_weights_easy_tokens(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    tokens = _token_nll(logits, labels)
    gamma = 2.0
    expected = sum((1 - p) ** gamma * n for _, n, p in tokens) / len(tokens)
    assert float(_loss("focal", focal_gamma=gamma)(logits, labels)) == pytest.approx(expected, rel=1e-5)
    # gamma 0 is plain cross-entropy.
    assert float(_loss("focal", focal_gamma=0.0)(logits, labels)) == pytest.approx(
        float(_loss("ce")(logits, labels)), rel=1e-5
    )


def test_mom_adds_lambda_times_ce_over_gold_o_tokens(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = batch
    tokens = _token_nll(logits, labels)
    ce = sum(n for _, n, _ in tokens) / len(tokens)
    o_terms = [n for g, n, _ in tokens if g == 0]
    expected = ce + 0.5 * sum(o_terms) / len(o_terms)
    assert float(_loss("mom", mom_lambda=0.5)(logits, labels)) == pytest.approx(expected, rel=1e-5)
    assert float(_loss("mom", mom_lambda=0.0)(logits, labels)) == pytest.approx(ce, rel=1e-5)


def test_losses_have_gradients_and_survive_a_batch_without_labels() -> None:
    logits = torch.randn(1, 4, 3, requires_grad=True)
    empty = torch.full((1, 4), IGNORE_INDEX)
    for name in ("ce", "weighted_ce", "focal", "mom"):
        loss = _loss(name)(logits, torch.tensor([[IGNORE_INDEX, 0, 1, 2]]))
        loss.backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        logits.grad = None
        assert float(_loss(name)(logits, empty).detach()) == 0.0


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        _loss("dice")
