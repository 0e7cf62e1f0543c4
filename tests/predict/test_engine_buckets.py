"""Batch widths rounded up to a bucket (issue 21): a bounded set of input shapes, the same entities."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shared.core.config import get_settings
from shared.predict.engine import EngineOptions, NerEngine
from shared.predict.engine.batching import WIDTH_BUCKET, bucket_width
from trainer.conll import read_conll


def test_bucket_width_rounds_up_to_few_widths_and_never_past_the_limit() -> None:
    widths = [bucket_width(w, 8, 256) for w in range(1, 257)]
    assert [bucket_width(w, 8, 256) for w in (1, 8, 9, 22, 64, 65, 129, 250)] == [
        8,
        8,
        16,
        24,
        64,
        80,
        160,
        256,
    ]
    assert len(set(widths)) == 16  # shapes a worker meets, whatever the texts
    assert all(0 <= b - w < max(8, w / 4) for w, b in zip(range(1, 257), widths, strict=True))
    assert bucket_width(250, 8, 250) == 250  # a model that takes 250 positions gets no more
    assert bucket_width(37, 1, 256) == 37  # off


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> tuple[NerEngine, NerEngine]:
    # Padded passes: packed ones (the default for this BERT) pad only the embeddings, unbucketed.
    bucketed = NerEngine.load(tiny_model_dir, EngineOptions(batch_size=8, packing=False))
    assert bucketed.options.width_bucket == WIDTH_BUCKET  # on by default
    exact = NerEngine(
        bucketed.model,
        bucketed.tokenizer,
        source="exact",
        options=replace(bucketed.options, width_bucket=1),
    )
    return bucketed, exact


def _texts() -> list[str]:
    """Texts of many lengths: one sentence up to documents past one window (256 tokens)."""
    sentences = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=400)]
    texts = sentences[:60]  # 1 to ~60 tokens
    start = 60
    for size in (2, 3, 5, 8, 13, 21, 34):  # paragraphs, and documents windowed with an overlap
        texts.append(" ".join(sentences[start : start + size]))
        start += size
    return texts


def test_bucketed_batches_give_the_same_entities_and_scores(engines: tuple[NerEngine, NerEngine]) -> None:
    bucketed, exact = engines
    widths: list[int] = []
    hook = bucketed.model.register_forward_pre_hook(
        lambda _module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    texts = _texts()
    try:
        got = bucketed.predict(texts)
        exact_widths = len(widths)
        want = exact.predict(texts)  # same model object: the hook sees these too
    finally:
        hook.remove()
    limit = bucketed.window_tokens + 2  # [CLS] and [SEP]
    assert all(bucket_width(w, WIDTH_BUCKET, limit) == w for w in widths[:exact_widths]), widths
    # Without buckets the same texts meet widths that are no bucket's: the test can tell.
    assert any(bucket_width(w, WIDTH_BUCKET, limit) != w for w in widths[exact_widths:]), widths
    assert sum(len(e) for e in want) > 50  # the tiny model finds entities in these texts
    for text, mine, theirs in zip(texts, got, want, strict=True):
        assert [(e.entity_group, e.start, e.end) for e in mine] == [
            (e.entity_group, e.start, e.end) for e in theirs
        ], text
        assert [e.score for e in mine] == pytest.approx([e.score for e in theirs], abs=1e-4)
