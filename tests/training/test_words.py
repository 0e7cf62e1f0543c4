"""One definition of a word: the trainer labels exactly the positions the engine decodes, for any tokenizer.

Two real fast tokenizers: the bundled BERT WordPiece (uncased, splits punctuation itself) and a
SentencePiece-style Unigram tokenizer built here with the ``tokenizers`` library, whose pieces
start with the space before a word and may glue punctuation onto it (``▁Paris,``), on a tiny
random-weight XLM-R.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from shared.predict.engine import EngineOptions, NerEngine
from shared.predict.engine.spans import decode_entities
from shared.predict.engine.words import first_tokens, piece_tags, split_words
from tests.support.tiny_encoders import LABEL2ID, LABELS, SENTENCES, bert_wordpiece, xlmr_unigram
from trainer.encoding import encode_split, sentence_words
from trainer.losses import IGNORE_INDEX


def test_words_are_letter_and_digit_runs_and_single_punctuation() -> None:
    def words(text: str) -> list[str]:
        return [text[start:end] for start, end in split_words(text)]

    assert words("Collomb-Patton") == ["Collomb", "-", "Patton"]
    assert words("1. Jesper") == ["1", ".", "Jesper"]
    assert words("Paris, France") == ["Paris", ",", "France"]
    assert words("O'Neill") == ["O", "'", "Neill"]
    assert words("x_y 25.76") == ["x", "_", "y", "25", ".", "76"]
    # Combining marks stay with their letters; spaces of any kind separate.
    assert words("Jose\u0301 Mu\u0308ller\n\u3000東京 😀!") == [
        "Jose\u0301",
        "Mu\u0308ller",
        "東京",
        "😀",
        "!",
    ]
    assert words(" \t\r\n") == []


def test_a_tokens_words_inherit_its_tag() -> None:
    assert [tag for *_, tag in piece_tags("Collomb-Patton", "I-PER")] == ["I-PER"] * 3
    assert [tag for *_, tag in piece_tags("al-Boushi", "B-PER")] == ["B-PER", "I-PER", "I-PER"]
    assert [tag for *_, tag in piece_tags("1.", "O")] == ["O", "O"]
    sentence = sentence_words(["1.", "Jesper"], ["O", "B-PER"])
    assert sentence.text == "1. Jesper"
    assert [sentence.text[s:e] for s, e in sentence.spans] == ["1", ".", "Jesper"]
    assert sentence.tags == ["O", "O", "B-PER"]


@pytest.fixture(params=["bert-wordpiece", "xlmr-unigram"])
def engine(request: pytest.FixtureRequest) -> NerEngine:
    torch.manual_seed(0)
    tokenizer, model = bert_wordpiece() if request.param == "bert-wordpiece" else xlmr_unigram()
    return NerEngine(model, tokenizer, source=request.param, options=EngineOptions(device="cpu"))


def _gold_spans(tokens: list[str], tags: list[str]) -> list[tuple[str, int, int]]:
    """Entity character spans of the joined text, straight from the tokens (no word splitting)."""
    spans, position = [], 0
    for token, tag in zip(tokens, tags, strict=True):
        if tag.startswith("B-"):
            spans.append([tag[2:], position, position + len(token)])
        elif tag.startswith("I-"):
            spans[-1][2] = position + len(token)
        position += len(token) + 1
    return [tuple(span) for span in spans]


def test_the_trainer_labels_exactly_the_positions_the_engine_reads(engine: NerEngine) -> None:
    rows = datasets.Dataset.from_dict(
        {"tokens": [t for t, _ in SENTENCES], "tags": [g for _, g in SENTENCES]}
    )
    encoded = encode_split(rows, engine.tokenizer, LABEL2ID, max_length=128, case_feature=False)
    texts = [" ".join(tokens) for tokens, _ in SENTENCES]
    prefix = len(engine._prefix)
    for text, (tokens, tags), example, served in zip(
        texts, SENTENCES, encoded, engine._encode(texts), strict=True
    ):
        assert example["input_ids"][prefix : prefix + len(served.ids)] == served.ids, text
        labelled = [i - prefix for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX]
        assert labelled == [t for t in served.first if t is not None], text
        # Labels in, entities out: the engine decoding the trained labels gives back the annotation.
        probs = np.zeros((len(served.ids), len(LABELS)), dtype=np.float32)
        probs[:, 0] = 1.0
        for position in labelled:
            probs[position] = np.eye(len(LABELS))[example["labels"][position + prefix]]
        entities = decode_entities(text, served.spans, served.first, probs, engine.id2label)
        assert [(e.entity_group, e.start, e.end) for e in entities] == _gold_spans(tokens, tags), text
        assert all(e.word == text[e.start : e.end] for e in entities)


def test_both_tokenizers_give_the_same_words_and_offsets(engine: NerEngine) -> None:
    text = "1. Jeremie Collomb-Patton\nAL-AIN, United Arab Emirates: O'Neill"
    [served] = engine._encode([text])
    assert [text[s:e] for s, e in served.spans] == [
        "1", ".", "Jeremie", "Collomb", "-", "Patton", "AL", "-", "AIN", ",", "United", "Arab", "Emirates",
        ":", "O", "'", "Neill",
    ]  # fmt: skip
    assert served.spans == split_words(text)


def test_sentencepiece_pieces_with_spaces_and_glued_punctuation_find_their_words() -> None:
    tokenizer, _ = xlmr_unigram()
    text = "Paris, France D'Arcy\nLONDON Collomb-Patton,"
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    # The cases this test is about: pieces that start with the space, glue punctuation on.
    assert pieces == ["▁Paris,", "▁France", "▁D'", "Arcy", "▁LONDON", "▁Collomb-Patton", ","]
    spans = split_words(text)
    assert [text[s:e] for s, e in spans] == [
        "Paris",
        ",",
        "France",
        "D",
        "'",
        "Arcy",
        "LONDON",
        "Collomb",
        "-",
        "Patton",
        ",",
    ]
    # Words without a piece of their own have no position that speaks for them.
    first = first_tokens(spans, encoding["offset_mapping"])
    assert first == [0, None, 1, 2, None, 3, 4, 5, None, None, 6]

    # Decoded: the glued comma stays outside, the apostrophe and the glued "-Patton" stay inside,
    # and the line break ends the LOC headline word before the person.
    words = ["B-LOC", "B-LOC", "B-PER", "I-PER", "I-LOC", "I-PER", "O"]
    probs = np.stack([np.eye(len(LABELS))[LABEL2ID[tag]] for tag in words])
    entities = decode_entities(text, spans, first, probs, dict(enumerate(LABELS)))
    assert [(e.word, e.entity_group) for e in entities] == [
        ("Paris", "LOC"), ("France", "LOC"), ("D'Arcy", "PER"), ("LONDON", "LOC"), ("Collomb-Patton", "PER")
    ]  # fmt: skip
