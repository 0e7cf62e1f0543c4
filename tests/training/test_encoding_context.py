"""Document context in training examples: neighbours of the same document, labels only on the targets."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from shared.core.config import bundled_base_model
from trainer.data import read_local
from trainer.encoding import encode_split, sentence_words
from trainer.losses import IGNORE_INDEX

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
LABEL2ID = {label: i for i, label in enumerate(LABELS)}


def _conll(path: Path, documents: list[list[list[tuple[str, str]]]]) -> Path:
    lines = []
    for document in documents:
        lines += ["-DOCSTART- -X- O O", ""]
        for sentence in document:
            lines += [f"{token} NNP O {tag}" for token, tag in sentence] + [""]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(bundled_base_model())


@pytest.fixture
def two_documents(tmp_path: Path):  # type: ignore[no-untyped-def]
    # Document 1 speaks of Alpha words only, document 2 of Beta words: an example mixing them would
    # have taken context from the wrong document.
    doc1 = [
        [("Alpha", "B-PER"), ("went", "O"), ("to", "O"), (f"Alphaville{i}", "B-LOC"), (".", "O")]
        for i in range(12)
    ]
    doc2 = [
        [("Beta-Jones", "B-PER"), ("saw", "O"), (f"Betatown{i}", "B-LOC"), ("again", "O")] for i in range(9)
    ]
    dataset, _ = read_local(_conll(tmp_path / "two.conll", [doc1, doc2]), cache_dir=tmp_path / "cache")
    return dataset


def _labelled_words(dataset) -> int:  # type: ignore[no-untyped-def]
    return sum(
        len(sentence_words(t, g).spans) for t, g in zip(dataset["tokens"], dataset["tags"], strict=True)
    )


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_every_word_is_labelled_once_and_context_stays_in_its_document(
    tokenizer, two_documents, fraction: float
) -> None:  # type: ignore[no-untyped-def]
    encoded = encode_split(
        two_documents, tokenizer, LABEL2ID, max_length=48, case_feature=True, context_tokens=8,
        no_context_fraction=fraction, seed=1,
    )  # fmt: skip
    labelled = 0
    with_context = 0
    for example in encoded:
        assert len(example["input_ids"]) <= 48
        assert len(example["token_type_ids"]) == len(example["input_ids"]) == len(example["labels"])
        text = tokenizer.decode(example["input_ids"])
        assert not ("alpha" in text and "beta" in text), text
        positions = [i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX]
        labelled += len(positions)
        # Context: unlabelled content tokens before the first or after the last labelled one.
        with_context += positions[0] > 1 or positions[-1] < len(example["input_ids"]) - 3
    assert labelled == _labelled_words(two_documents)
    assert with_context > 0
    # Several sentences share an example (12 + 9 sentences, fewer examples) unless read alone.
    assert len(encoded) < 21 or fraction > 0


def test_sentences_read_alone_have_no_context(tokenizer, two_documents) -> None:  # type: ignore[no-untyped-def]
    encoded = encode_split(
        two_documents, tokenizer, LABEL2ID, max_length=256, case_feature=False, context_tokens=64,
        no_context_fraction=1.0,
    )  # fmt: skip
    assert len(encoded) == len(two_documents)
    for example, tokens in zip(encoded, two_documents["tokens"], strict=True):
        assert example["input_ids"] == tokenizer(" ".join(tokens))["input_ids"]


def test_without_context_each_sentence_is_its_own_example(tokenizer, two_documents) -> None:  # type: ignore[no-untyped-def]
    encoded = encode_split(two_documents, tokenizer, LABEL2ID, max_length=256, case_feature=False)
    assert len(encoded) == len(two_documents)
    assert encoded[0]["input_ids"] == tokenizer("Alpha went to Alphaville0 .")["input_ids"]
