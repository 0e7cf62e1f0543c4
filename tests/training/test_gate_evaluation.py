"""Scoring through the engine (trainer/evaluation.py): texts as users send them, spans back onto tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from seqeval.metrics import f1_score

from shared.core.config import Settings, get_settings
from shared.predict.engine import NerEngine
from shared.predict.schemas import Entity
from shared.training.errors import DataError
from tests.support.conll_subset import write_conll
from trainer import evaluation
from trainer.conll import Sentence, read_conll, read_documents


def _entity(text: str, start: int, end: int, group: str) -> Entity:
    return Entity(word=text[start:end], entity_group=group, score=0.9, start=start, end=end)


def _at(text: str, needle: str, group: str, occurrence: int = 0) -> Entity:
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(needle, start + 1)
    return _entity(text, start, start + len(needle), group)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> NerEngine:
    return NerEngine.load(tiny_model_dir)


# --- texts and offsets ----------------------------------------------------------------------------


def test_texts_are_built_as_users_send_them_and_offsets_point_at_each_token() -> None:
    sentences = [Sentence(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
                 Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"])]  # fmt: skip
    text, offsets = evaluation.sentence_text(sentences[0].tokens)
    assert text == "EU rejects German call"
    assert [text[s:e] for s, e in offsets] == sentences[0].tokens
    document, per_sentence = evaluation.document_text(sentences)
    assert document == "EU rejects German call\nPeter Blackburn"
    for sentence, offsets in zip(sentences, per_sentence, strict=True):
        assert [document[s:e] for s, e in offsets] == sentence.tokens


# --- spans back onto tokens -----------------------------------------------------------------------


def test_an_entity_covering_part_of_a_token_tags_the_whole_token() -> None:
    tokens = ["1.", "Jesper", "Ronnback", "(", "Sweden", ")"]
    text, offsets = evaluation.sentence_text(tokens)
    # The engine's "." of "1." as a person (issue 11), then the name and the country.
    entities = [_at(text, ".", "PER"), _at(text, "Jesper Ronnback", "PER"), _at(text, "Sweden", "LOC")]
    tags = evaluation.spans_to_tags(offsets, entities)
    assert tags == ["B-PER", "B-PER", "I-PER", "O", "B-LOC", "O"]
    gold = ["O", "B-PER", "I-PER", "O", "B-LOC", "O"]
    assert f1_score([gold], [tags]) == pytest.approx(0.8)  # the stray "." costs precision


def test_a_name_split_inside_a_token_counts_as_two_entities() -> None:
    tokens = ["Nihad", "al-Boushi", "scored"]
    text, offsets = evaluation.sentence_text(tokens)
    split = [_at(text, "Nihad al", "PER"), _at(text, "Boushi", "PER")]
    # "al-Boushi" shares 2 characters with the first entity and 6 with the second: it goes to the second.
    assert evaluation.spans_to_tags(offsets, split) == ["B-PER", "B-PER", "O"]
    whole = [_at(text, "Nihad al-Boushi", "PER")]
    assert evaluation.spans_to_tags(offsets, whole) == ["B-PER", "I-PER", "O"]


def test_punctuation_tokens_follow_the_span_and_whitespace_tags_nothing() -> None:
    tokens = ["Paris", ",", "France", "and", "U.S.", "officials"]
    text, offsets = evaluation.sentence_text(tokens)
    assert evaluation.spans_to_tags(offsets, [_at(text, "Paris", "LOC"), _at(text, "France", "LOC")]) == [
        "B-LOC", "O", "B-LOC", "O", "O", "O",
    ]  # fmt: skip
    # A span that runs over the comma tags the comma token too: the user got "Paris ," as one entity.
    assert evaluation.spans_to_tags(offsets, [_at(text, "Paris ,", "LOC")])[:3] == ["B-LOC", "I-LOC", "O"]
    # Part of an abbreviation with dots still tags its token; a span of spaces alone tags nothing.
    assert evaluation.spans_to_tags(offsets, [_at(text, "U.S", "LOC")])[4] == "B-LOC"
    space = text.index(" ")
    assert evaluation.spans_to_tags(offsets, [_entity(text, space, space + 1, "PER")]) == ["O"] * 6


def test_adjacent_entities_of_one_type_stay_separate_and_types_are_kept() -> None:
    tokens = ["Google", "was", "founded", "by", "Larry", "Page", "Sergey", "Brin", "in", "California", "."]
    text, offsets = evaluation.sentence_text(tokens)
    entities = [
        _at(text, "Google", "ORG"), _at(text, "Larry Page", "PER"), _at(text, "Sergey Brin", "PER"),
        _at(text, "California", "LOC"),
    ]  # fmt: skip
    assert evaluation.spans_to_tags(offsets, reversed(entities)) == [
        "B-ORG", "O", "O", "O", "B-PER", "I-PER", "B-PER", "I-PER", "O", "B-LOC", "O",
    ]  # fmt: skip


def test_spans_in_a_document_land_on_the_right_sentence() -> None:
    sentences = [Sentence(["AL-AIN", ",", "United", "Arab", "Emirates"], ["O"] * 5),
                 Sentence(["Japan", "won"], ["O", "O"])]  # fmt: skip
    document, per_sentence = evaluation.document_text(sentences)
    entities = [_at(document, "United Arab Emirates", "LOC"), _at(document, "Japan", "LOC")]
    assert [evaluation.spans_to_tags(offsets, entities) for offsets in per_sentence] == [
        ["O", "O", "B-LOC", "I-LOC", "I-LOC"],
        ["B-LOC", "O"],
    ]


# --- a real model through the engine -------------------------------------------------------------


def test_engine_tags_are_the_engines_entities_mapped_onto_tokens(engine: NerEngine) -> None:
    sentences = read_conll(get_settings().conll_dir / "eng.testa", limit=60)
    tagged = evaluation.tag_sentences(engine, sentences)
    for sentence, tags in zip(sentences, tagged, strict=True):
        text, offsets = evaluation.sentence_text(sentence.tokens)
        [entities] = engine.predict([text])
        # Every token a predicted entity starts on is B-, every token without one is O.
        covered = {i for e in entities for i, (s, t) in enumerate(offsets) if s < e.end and e.start < t}
        assert {i for i, tag in enumerate(tags) if tag != "O"} == covered
        assert sum(tag.startswith("B-") for tag in tags) <= len(entities)


def test_scores_through_the_engine_per_type_and_overall(engine: NerEngine) -> None:
    conll = get_settings().conll_dir / "eng.testa"
    sentences = read_conll(conll, limit=150)
    report = evaluation.evaluate_sentences(engine, sentences)
    gold = [s.tags for s in sentences]
    assert report["sentences"] == 150
    # Support per type is the number of gold entities of that type, counted here independently.
    for name, row in report["per_type"].items():
        assert row["support"] == sum(tag == f"B-{name}" for tags in gold for tag in tags)
    assert 0.3 < report["f1"] < 1.0  # a real, imperfect model
    assert report["f1"] == pytest.approx(f1_score(gold, evaluation.tag_sentences(engine, sentences)))
    # Whole documents: the same gold sentences, another way of sending them.
    documents = read_documents(conll)[:3]
    by_document = evaluation.evaluate_documents(engine, documents)
    assert by_document["sentences"] == sum(len(d) for d in documents)
    assert 0.0 < by_document["f1"] <= 1.0
    perfect = evaluation.score_tags(gold, gold)
    assert perfect["f1"] == 1.0 and perfect["precision"] == 1.0


# --- the gate set ---------------------------------------------------------------------------------


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(state_dir=tmp_path / "state", data_roots=[tmp_path / "data"], **values)


def test_the_gate_set_is_the_operators_file_or_folder_inside_the_data_roots(tmp_path: Path) -> None:
    sentences = read_conll(get_settings().conll_dir / "eng.testa", limit=20)
    gate = write_conll(tmp_path / "data" / "gate" / "dev.conll", sentences)
    write_conll(tmp_path / "data" / "gate" / "train.conll", sentences[:5])
    assert evaluation.gate_set_from_settings(_settings(tmp_path)) is None  # nothing configured
    by_file = evaluation.gate_set_from_settings(_settings(tmp_path, gate_data=str(gate)))
    by_folder = evaluation.gate_set_from_settings(_settings(tmp_path, gate_data="gate"))
    bootstrap = evaluation.gate_set_from_settings(_settings(tmp_path, bootstrap_data="gate"))
    assert by_file.sentences == by_folder.sentences == bootstrap.sentences == 20
    assert by_file.gate_hash == by_folder.gate_hash == bootstrap.gate_hash
    quantized = evaluation.gate_set_from_settings(
        _settings(tmp_path, gate_data=str(gate)), options=evaluation_options("int8")
    )
    assert quantized.gate_hash != by_file.gate_hash  # another measurement, not comparable
    write_conll(gate, sentences[:19])
    assert evaluation.gate_set_from_settings(_settings(tmp_path, gate_data=str(gate))).gate_hash != (
        by_file.gate_hash
    )
    outside = tmp_path / "elsewhere.conll"
    write_conll(outside, sentences)
    with pytest.raises(DataError, match=r"NER_GATE_DATA: .*outside the allowed data folders"):
        evaluation.gate_set_from_settings(_settings(tmp_path, gate_data=str(outside)))
    with pytest.raises(DataError, match=r"NER_GATE_DATA: .*not a local file"):
        evaluation.gate_set_from_settings(_settings(tmp_path, gate_data="someone/dataset"))


def evaluation_options(quantize: str):  # type: ignore[no-untyped-def]
    from shared.predict.engine import EngineOptions

    return EngineOptions(quantize=quantize)
