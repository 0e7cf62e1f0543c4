"""Packed forward passes (issue 18): the Linear layers see real tokens only, the answers stay the same.

Checked against transformers' own padded forward on the models users serve: the shipped default
model (MiniLM fine-tuned with the case feature: BERT with token types), the tests' tiny fine-tuned
model, and a random-weight XLM-R with a SentencePiece-style Unigram
tokenizer (its positions count from the padding id). Architectures the packed pass does not know
keep the padded forward.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
    DistilBertForTokenClassification,
)

from shared.core.config import DEFAULT_MODEL_DIR, bundled_base_model, get_settings
from shared.predict.engine import EngineOptions, NerEngine
from shared.predict.engine.packed import packable, packed_logits
from shared.predict.engine.runtime import cpu_has_vnni, quantize_int8
from tests.support.tiny_encoders import LABELS, SENTENCES, bert_wordpiece, xlmr_unigram
from trainer.conll import read_conll


def _conll_texts(count: int) -> list[str]:
    return [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=count)]


def _padded_inputs(engine: NerEngine, texts: list[str]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Each text as one window with its special tokens, padded to the longest, in the given order."""
    windows = [encoded.window(0, len(encoded.ids)) for encoded in engine._encode(texts)]
    lengths = [len(engine._prefix) + len(window.ids) + len(engine._suffix) for window in windows]
    return engine._padded_inputs(windows, max(lengths)), lengths


def _assert_same_logits(engine: NerEngine, texts: list[str]) -> None:
    inputs, lengths = _padded_inputs(engine, texts)
    with torch.inference_mode():
        want = engine.model(**inputs).logits
        got = packed_logits(
            engine.model, inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), lengths
        )
    assert got.shape == (sum(lengths), want.shape[-1])
    for row, part in enumerate(got.split(lengths)):
        torch.testing.assert_close(part, want[row, : lengths[row]], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> NerEngine:
    return NerEngine.load(tiny_model_dir, EngineOptions(batch_size=32, lanes=1))  # a pass at a time


def test_packed_logits_are_the_models_own_for_the_fine_tuned_models(tiny: NerEngine) -> None:
    shipped = NerEngine.load(DEFAULT_MODEL_DIR)
    assert shipped.packed and shipped.case_feature and tiny.packed
    texts = _conll_texts(40)  # 3 to ~60 tokens, in file order: attention groups out of packing order
    for engine in (shipped, tiny):
        _assert_same_logits(engine, texts)
        _assert_same_logits(engine, sorted(texts, key=len))  # in order: groups are runs of packed rows
        _assert_same_logits(engine, [texts[0]] * 3)  # equal lengths: one block, no padding at all


@pytest.mark.parametrize("build", [xlmr_unigram, bert_wordpiece], ids=["xlmr-unigram", "bert-wordpiece"])
def test_packed_logits_are_the_models_own_for_random_xlmr_and_bert(build) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    tokenizer, model = build(layers=2)
    engine = NerEngine(model, tokenizer, source="random", options=EngineOptions(device="cpu"))
    assert engine.packed
    texts = [" ".join(tokens) for tokens, _ in SENTENCES]
    _assert_same_logits(engine, [*texts, texts[3] + " " + texts[4], texts[0]])


def test_the_engine_answers_a_mixed_micro_batch_in_one_pass_with_the_padded_engines_entities(
    tiny: NerEngine,
) -> None:
    padded = NerEngine(
        tiny.model, tiny.tokenizer, source="padded", options=replace(tiny.options, packing=False)
    )
    assert not padded.packed
    sentences = _conll_texts(300)
    random.Random(0).shuffle(sentences)
    micro_batch = sentences[:32]  # what 32 concurrent requests bring: 3 to 60+ tokens
    documents = [" ".join(sentences[i : i + 30]) for i in (40, 100)]  # past one 256-token window
    passes = tiny.forward_passes, padded.forward_passes
    got, want = tiny.predict(micro_batch + documents), padded.predict(micro_batch + documents)
    packed_passes, padded_passes = tiny.forward_passes - passes[0], padded.forward_passes - passes[1]
    # Padded, the lengths split the micro-batch into several passes; packed, only the documents'
    # longer windows make a second pass.
    assert packed_passes <= 2 < padded_passes, (packed_passes, padded_passes)
    assert sum(len(e) for e in want) > 30  # the tiny model finds entities in these texts
    for text, mine, theirs in zip(micro_batch + documents, got, want, strict=True):
        assert [(e.entity_group, e.start, e.end) for e in mine] == [
            (e.entity_group, e.start, e.end) for e in theirs
        ], text
        assert [e.score for e in mine] == pytest.approx([e.score for e in theirs], abs=1e-4)


def test_int8_packs_only_with_8_bit_activations(tiny_model_dir: Path) -> None:
    # One activation scale per Linear input, and a packed pass puts more tokens under it: with 7-bit
    # activations (CPUs without VNNI) that cost document F1, with 8-bit ones it did not (engine.py).
    # The shipped model: the tiny one's entities are too close to its thresholds to survive rounding.
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    model = AutoModelForTokenClassification.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32)

    def int8_engine(*, full_range: bool, packing: bool = True) -> NerEngine:
        quantized = quantize_int8(model, full_range=full_range)  # a quantized copy: model stays fp32
        # Already quantized: the engine's own int8 pass finds no fp32 Linear left to quantize.
        options = EngineOptions(precision="int8", packing=packing)
        return NerEngine(quantized, tokenizer, source="int8", options=options)

    seven_bit, eight_bit = int8_engine(full_range=False), int8_engine(full_range=True)
    assert seven_bit.precision == eight_bit.precision == "int8"
    assert not seven_bit.packed and eight_bit.packed and packable(seven_bit.model)
    assert NerEngine.load(tiny_model_dir, EngineOptions(precision="int8")).packed == cpu_has_vnni()
    texts = _conll_texts(40)
    padded = int8_engine(full_range=True, packing=False)
    assert not padded.packed
    got, want = eight_bit.predict(texts), padded.predict(texts)
    spans = [[(e.entity_group, e.start, e.end) for e in entities] for entities in (*got, *want)]
    assert sum(map(len, spans)) > 40
    # Packed, the passes' activation scales differ from padded ones: the same entities but for rounding.
    same = sum(mine == theirs for mine, theirs in zip(spans[: len(texts)], spans[len(texts) :], strict=True))
    assert same >= 0.9 * len(texts), (same, len(texts))


def test_other_architectures_keep_the_padded_forward() -> None:
    tokenizer = AutoTokenizer.from_pretrained(bundled_base_model())
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {label: i for i, label in enumerate(LABELS)}}
    distil = DistilBertForTokenClassification(
        DistilBertConfig(
            vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64, **labels
        )
    )
    engine = NerEngine(distil, tokenizer, source="distilbert", options=EngineOptions(device="cpu"))
    assert not engine.packed
    assert len(engine.predict(["Shaun O'Neill met José in Zürich."])) == 1  # the padded forward answers
    _, bert = bert_wordpiece()
    assert packable(bert)
    # Relative position scores are added inside attention, which the packed pass does not do.
    bert.config = BertConfig(**{**bert.config.to_dict(), "position_embedding_type": "relative_key"})
    assert not packable(bert)
