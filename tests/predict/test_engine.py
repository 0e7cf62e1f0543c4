"""The inference engine against a real fine-tuned checkpoint: spans, Unicode, long texts, devices."""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

from shared.core.config import get_settings
from shared.predict import casing
from shared.predict.engine import EngineOptions, ModelLoadError, NerEngine, words
from shared.predict.engine.batching import group_by_length, split_for_lanes
from shared.predict.engine.lanes import run_in_lanes
from shared.predict.engine.runtime import cpu_threads, pick_device
from shared.predict.engine.spans import decode_entities
from shared.predict.engine.windows import plan_windows
from shared.predict.schemas import Entity
from trainer.conll import read_conll

GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> NerEngine:
    return NerEngine.load(tiny_model_dir)


def _spans(entities: list[Entity]) -> list[tuple[str, int, int]]:
    return [(e.entity_group, e.start, e.end) for e in entities]


def _assert_well_formed(text: str, entities: list[Entity]) -> None:
    previous_end = 0
    for entity in entities:
        assert 0 <= previous_end <= entity.start < entity.end <= len(text), (entities, text)
        assert entity.word == text[entity.start : entity.end]
        assert 0.0 <= entity.score <= 1.0
        previous_end = entity.end


def test_google_sentence_keeps_the_callers_casing(engine: NerEngine) -> None:
    [entities] = engine.predict([GOOGLE])
    assert [(e.word, e.entity_group) for e in entities] == [
        ("Google", "ORG"),
        ("Larry Page", "PER"),
        ("Sergey Brin", "PER"),
        ("California", "LOC"),
    ]
    _assert_well_formed(GOOGLE, entities)


def test_entities_equal_the_transformers_pipeline_with_first_strategy(
    engine: NerEngine, tiny_model_dir: Path
) -> None:
    sentences = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=120)]
    reference = pipeline("token-classification", model=str(tiny_model_dir), aggregation_strategy="first")
    expected = reference(sentences, batch_size=16)
    ours = engine.predict(sentences)
    assert sum(len(entities) for entities in ours) > 100  # the comparison covers many entities
    for sentence, mine, theirs in zip(sentences, ours, expected, strict=True):
        assert _spans(mine) == [(e["entity_group"], e["start"], e["end"]) for e in theirs], sentence
        assert [e.score for e in mine] == pytest.approx([float(e["score"]) for e in theirs], abs=1e-4)
        _assert_well_formed(sentence, mine)


def _constant_model(tokenizer_dir: Path, label: str):  # type: ignore[no-untyped-def]
    """The tiny checkpoint with a head answering ``label`` for every sub-token: decoding rules alone."""
    model = AutoModelForTokenClassification.from_pretrained(tokenizer_dir)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-5.0)
        model.classifier.bias[model.config.label2id[label]] = 5.0
    return model


def test_where_the_service_is_deliberately_not_the_pipeline(tiny_model_dir: Path) -> None:
    # Every sub-token says I-PER. The pipeline's "first" strategy then runs one person across the
    # caller's line break (a dateline into the next sentence); the engine ends entities at line
    # breaks, as the caller's text does.
    model = _constant_model(tiny_model_dir, "I-PER")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "LONDON 1996-08-30\nPhil Simmons"
    reference = pipeline(
        "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first"
    )
    assert [(e["start"], e["end"]) for e in reference(text)] == [(0, len(text))]
    engine = NerEngine(model, tokenizer, source="constant", options=EngineOptions())
    [entities] = engine.predict([text])
    assert [(e.word, e.entity_group) for e in entities] == [
        ("LONDON 1996-08-30", "PER"),
        ("Phil Simmons", "PER"),
    ]


def test_names_with_hyphens_and_apostrophes_are_one_entity_and_glued_punctuation_stays_out(
    engine: NerEngine,
) -> None:
    # Word-level rules with chosen labels on the engine's own words and first sub-tokens; inside a
    # name its hyphen or apostrophe carries the name's label, as training taught it.
    text = "1. Jeremie Collomb-Patton (Paris, FRA) O'Neill\nAL-AIN , United Arab Emirates"
    tagged = [
        ("1", "O"), (".", "O"), ("Jeremie", "B-PER"), ("Collomb", "I-PER"), ("-", "I-PER"),
        ("Patton", "I-PER"), ("(", "O"), ("Paris", "B-LOC"), (",", "O"), ("FRA", "B-LOC"), (")", "O"),
        ("O", "B-PER"), ("'", "I-PER"), ("Neill", "I-PER"), ("AL", "B-LOC"), ("-", "I-LOC"),
        ("AIN", "I-LOC"), (",", "O"), ("United", "B-LOC"), ("Arab", "I-LOC"), ("Emirates", "I-LOC"),
    ]  # fmt: skip
    [encoded] = engine._encode([text])
    assert [text[start:end] for start, end in encoded.spans] == [word for word, _ in tagged]
    label2id = {label: i for i, label in engine.id2label.items()}
    probs = np.zeros((len(encoded.ids), len(engine.id2label)), dtype=np.float32)
    for token, (_, tag) in zip(encoded.first, tagged, strict=True):
        probs[token, label2id[tag]] = 1.0
    entities = decode_entities(text, encoded.spans, encoded.first, probs, engine.id2label)
    assert [(e.word, e.entity_group) for e in entities] == [
        ("Jeremie Collomb-Patton", "PER"), ("Paris", "LOC"), ("FRA", "LOC"), ("O'Neill", "PER"),
        ("AL-AIN", "LOC"), ("United Arab Emirates", "LOC"),
    ]  # fmt: skip
    _assert_well_formed(text, entities)


def test_line_breaks_end_entities_and_an_inside_tag_after_o_starts_one(engine: NerEngine) -> None:
    text = "Bonn\nGermany said Weah"
    spans = words.split_words(text)
    tags = ["B-LOC", "I-LOC", "O", "I-PER"]
    label2id = {label: i for i, label in engine.id2label.items()}
    probs = np.stack([np.eye(len(engine.id2label))[label2id[tag]] for tag in tags])
    entities = decode_entities(text, spans, [0, 1, 2, 3], probs, engine.id2label)
    assert [(e.word, e.entity_group) for e in entities] == [
        ("Bonn", "LOC"),
        ("Germany", "LOC"),
        ("Weah", "PER"),
    ]


def test_batched_prediction_equals_one_text_at_a_time(engine: NerEngine) -> None:
    texts = [GOOGLE, "Kofi Annan", "  ", "In Brussels , the European Commission said on Monday " * 5, "EU"]
    together = engine.predict(texts)
    for text, entities in zip(texts, together, strict=True):
        [alone] = engine.predict([text])
        assert _spans(entities) == _spans(alone)
        assert [e.score for e in entities] == pytest.approx([e.score for e in alone], abs=1e-4)


def test_empty_and_whitespace_texts_have_no_entities(engine: NerEngine) -> None:
    assert engine.predict(["", " \r\n\t  ", "\u3000\u00a0"]) == [[], [], []]
    assert engine.predict([]) == []


# Pieces mixing entity names with the characters that break naive offset handling.
_NAMES = ["Google", "Larry Page", "Sergey Brin", "California", "Kofi Annan", "Müller", "Zürich", "José"]
_ODD = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("éÉñçøß東京北京日本😀🇩🇪👍🏽\u0301\u0308\u200d\ufe0f\r\n\t .,;:-'\"()")),
        st.characters(codec="utf-8"),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(st.one_of(st.sampled_from(_NAMES), _ODD), min_size=1, max_size=12),
    joiner=st.sampled_from([" ", "\r\n", "\t", "", " \u0301 "]),
)
def test_offsets_slice_the_original_text_for_any_unicode(
    engine: NerEngine, pieces: list[str], joiner: str
) -> None:
    text = joiner.join(pieces)
    [entities] = engine.predict([text])
    _assert_well_formed(text, entities)
    for entity in entities:
        # A word is never cut before its own combining marks (accent-stripping tokenizers end early).
        assert entity.end == len(text) or not unicodedata.category(text[entity.end]).startswith("M")


def test_decomposed_accents_and_lone_surrogates_keep_offsets(engine: NerEngine) -> None:
    text = "Jose\u0301 Mu\u0308ller visited Zu\u0308rich ; \ud800 Larry Page spoke in California ."
    [entities] = engine.predict([text])
    _assert_well_formed(text, entities)
    assert "Larry Page" in [e.word for e in entities]
    assert any(e.word.endswith("\u0301") or e.word.endswith("ller") for e in entities)


def test_windows_cover_every_token_once_with_the_stride_as_context() -> None:
    for n_tokens in (1, 5, 30, 31, 100, 997):
        for size, stride in ((30, 8), (30, 0), (16, 15)):
            windows = plan_windows(0, n_tokens, size, stride)
            owned = [t for w in windows for t in range(w.own_start, w.own_end)]
            assert owned == list(range(n_tokens))
            for w in windows:
                assert w.end - w.start <= size
                assert w.start <= w.own_start <= w.own_end <= w.end
                if w.own_start > 0:
                    assert w.own_start - w.start >= min(stride, size // 2) // 2
                if w.own_end < n_tokens:
                    assert w.end - w.own_end >= min(stride, size // 2) // 2


def test_entities_at_window_edges_are_reported_once_and_whole(tiny_model_dir: Path) -> None:
    # Small windows so that many names straddle a window edge; padding shifts them along.
    engine = NerEngine.load(tiny_model_dir, EngineOptions(max_window_tokens=24, stride_tokens=8))
    parts = ["word " * (i % 7) + "Sergey Brin met Larry Page in California ." for i in range(40)]
    text = " ".join(parts)
    [entities] = engine.predict([text])
    _assert_well_formed(text, entities)

    encoding = engine.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    windows = plan_windows(0, len(encoding["input_ids"]), engine.window_tokens, engine.stride_tokens)
    assert len(windows) > 10
    # Character positions where a window starts or ends, or where ownership passes to the next window.
    starts = [start for start, _ in encoding["offset_mapping"]]
    edges = {starts[t] for w in windows[1:] for t in (w.start, w.own_start)}
    edges |= {starts[w.end] for w in windows[:-1]}
    found = {(e.start, e.end): e for e in entities}
    straddling = 0
    for name, group in (("Sergey Brin", "PER"), ("Larry Page", "PER"), ("California", "LOC")):
        for match in re.finditer(name, text):
            entity = found.get(match.span())
            assert entity is not None and entity.entity_group == group, (name, match.span(), entities)
            straddling += any(match.start() < edge < match.end() for edge in edges)
    assert straddling > 0  # the test did put names across window edges


def test_int8_quantization_runs_and_agrees_on_a_clear_sentence(tiny_model_dir: Path) -> None:
    engine = NerEngine.load(tiny_model_dir, EngineOptions(quantize="int8"))
    assert engine.precision == "int8"
    [entities] = engine.predict([GOOGLE])
    _assert_well_formed(GOOGLE, entities)
    assert {e.word for e in entities} >= {"Larry Page", "Sergey Brin", "California"}


def test_device_selection_prefers_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="NER_DEVICE=cuda"):
        pick_device("cuda")


def test_cpu_threads_follow_the_cores_this_process_may_use() -> None:
    import os

    assert cpu_threads() == len(os.sched_getaffinity(0))
    assert cpu_threads(3) == 3


def _record_passes(engine: NerEngine) -> tuple[list[tuple[int, int, str]], Callable[[], None]]:
    """(tokens the classifier saw, intra-op threads, thread name) of each packed pass from now on."""
    passes: list[tuple[int, int, str]] = []
    hook = engine.model.classifier.register_forward_hook(
        lambda module, args, output: passes.append(
            (args[0].shape[0], torch.get_num_threads(), threading.current_thread().name)
        )
    )
    return passes, hook.remove


def test_a_pass_gets_a_thread_per_128_tokens_and_the_caller_keeps_its_count(tiny_model_dir: Path) -> None:
    threads_before = torch.get_num_threads()
    engine = NerEngine.load(tiny_model_dir, EngineOptions(num_threads=2, batch_size=8, lanes=1))
    assert engine.packed  # a packed pass's classifier sees (tokens x hidden)
    passes, stop = _record_passes(engine)
    try:
        alone = engine.predict([GOOGLE])
        together = engine.predict([GOOGLE] * 8)
        long = engine.predict([" ".join([GOOGLE] * 20)])  # 300 tokens: two windows, one pass
        assert torch.get_num_threads() == 2
    finally:
        stop()
        torch.set_num_threads(threads_before)
    assert [threads for _, threads, _ in passes] == [1, 1, 2]
    assert passes[1][0] < 128 <= 256 <= passes[2][0]
    assert all(_spans(entities) == _spans(alone[0]) for entities in together)
    for entities in together:
        assert [e.score for e in entities] == pytest.approx([e.score for e in alone[0]], abs=1e-5)
    assert len(long[0]) >= 20


def test_a_small_call_takes_a_lane_per_32_tokens(tiny_model_dir: Path) -> None:
    # Lanes wake no thread mid-pass: 8 short sentences (under the 128 tokens a second thread in one
    # pass is worth) already run as two passes side by side, one thread each.
    threads_before = torch.get_num_threads()
    engine = NerEngine.load(tiny_model_dir, EngineOptions(num_threads=2))
    frugal = NerEngine(
        engine.model,
        engine.tokenizer,
        source="frugal",
        options=EngineOptions(num_threads=2, tokens_per_lane=128),
    )
    passes, stop = _record_passes(engine)  # the two engines share the model, so both are recorded
    try:
        in_lanes = engine.predict([GOOGLE] * 8)
        lanes_passes = list(passes)
        passes.clear()
        one_lane = frugal.predict([GOOGLE] * 8)
    finally:
        stop()
        torch.set_num_threads(threads_before)
    tokens = sum(seen for seen, _, _ in passes)
    assert 64 <= tokens < 128 and [threads for _, threads, _ in passes] == [1]
    assert len(lanes_passes) == 2 and {threads for _, threads, _ in lanes_passes} == {1}
    assert len({name for _, _, name in lanes_passes}) == 2  # the caller and a lane thread
    assert sum(seen for seen, _, _ in lanes_passes) == tokens
    assert [_spans(entities) for entities in in_lanes] == [_spans(entities) for entities in one_lane]


def test_a_calls_passes_run_longest_first(tiny_model_dir: Path) -> None:
    # Lanes take the next pass when done: the shortest last, so no lane is left alone with a long one.
    threads_before = torch.get_num_threads()
    texts = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=60)]
    engine = NerEngine.load(tiny_model_dir, EngineOptions(num_threads=2, batch_size=4, lanes=1))
    passes, stop = _record_passes(engine)
    try:
        engine.predict(texts)
    finally:
        stop()
        torch.set_num_threads(threads_before)
    tokens = [seen for seen, _, _ in passes]
    assert len(set(tokens)) > 5 and tokens == sorted(tokens, reverse=True)


def test_a_call_runs_its_passes_in_lanes_one_thread_each_with_the_same_answers(
    tiny_model_dir: Path,
) -> None:
    threads_before = torch.get_num_threads()
    texts = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=120)]
    one_lane = NerEngine.load(tiny_model_dir, EngineOptions(num_threads=2, lanes=1))
    two_lanes = NerEngine(
        one_lane.model, one_lane.tokenizer, source="lanes", options=EngineOptions(num_threads=2)
    )
    want = one_lane.predict(texts)
    passes, stop = _record_passes(two_lanes)  # the two engines share the model
    try:
        got = two_lanes.predict(texts)
        first_call = len(passes)
        two_lanes.predict(texts[:16])
    finally:
        stop()
        torch.set_num_threads(threads_before)
    assert {threads for _, threads, _ in passes} == {1}  # 2 threads: two lanes of one
    assert len({name for _, _, name in passes}) == 2  # the caller and a lane thread
    assert len(passes) - first_call == 2  # 16 sentences: one pass a lane
    # One window is never cut: its pass is the call's one lane and gets the threads its tokens are worth.
    eager_options = EngineOptions(num_threads=2, tokens_per_thread=4)
    eager = NerEngine(one_lane.model, one_lane.tokenizer, source="eager", options=eager_options)
    alone, stop_alone = _record_passes(eager)
    try:
        eager.predict([GOOGLE])
    finally:
        stop_alone()
        torch.set_num_threads(threads_before)
    assert [threads for _, threads, _ in alone] == [2]
    assert sum(len(entities) for entities in want) > 50
    for mine, theirs in zip(got, want, strict=True):
        assert _spans(mine) == _spans(theirs)
        assert [e.score for e in mine] == pytest.approx([e.score for e in theirs], abs=1e-5)


def test_an_error_in_one_lane_reaches_the_caller_and_stops_the_others() -> None:
    ran: list[int] = []

    def run(item: int) -> int:
        if item == 3:
            raise ValueError("pass 3 failed")
        time.sleep(0.01)
        ran.append(item)
        return item * 2

    assert run_in_lanes(lambda item: item * 2, list(range(10)), 3) == [item * 2 for item in range(10)]
    with pytest.raises(ValueError, match="pass 3 failed"):
        run_in_lanes(run, list(range(100)), 2)
    assert len(ran) < 10  # the lanes stopped taking passes


def test_a_folder_without_a_model_is_a_clear_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        NerEngine.load(tmp_path)


def test_models_trained_with_the_case_feature_get_case_type_ids(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A case-feature checkpoint: grown token-type embeddings (random rows make case matter a lot).
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model.bert.embeddings.token_type_embeddings = torch.nn.Embedding(casing.NUM_CASE_TYPES, 384)
    model.config.type_vocab_size = casing.NUM_CASE_TYPES
    setattr(model.config, casing.CONFIG_KEY, casing.CONFIG_VALUE)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path)

    engine = NerEngine.load(tmp_path)
    assert engine.case_feature
    [entities] = engine.predict([GOOGLE])

    encoding = engine.tokenizer(GOOGLE, return_offsets_mapping=True, return_tensors="pt")
    offsets = encoding["offset_mapping"][0].tolist()
    with torch.inference_mode():
        cased = model.eval()(
            input_ids=encoding["input_ids"],
            attention_mask=encoding["attention_mask"],
            token_type_ids=torch.tensor([casing.case_type_ids(GOOGLE, offsets)]),
        ).logits.softmax(-1)[0]
        uncased = model(input_ids=encoding["input_ids"]).logits.softmax(-1)[0]
    assert not torch.allclose(cased, uncased, atol=1e-3)  # the ids do change the answer
    content = offsets[1:-1]  # without [CLS] and [SEP]
    spans = words.split_words(GOOGLE)
    first = words.first_tokens(spans, content)
    expected = decode_entities(GOOGLE, spans, first, cased.numpy()[1:-1], engine.id2label)
    assert _spans(entities) == _spans(expected)
    assert [e.score for e in entities] == pytest.approx([e.score for e in expected], abs=1e-4)


def test_passes_are_cut_into_a_multiple_of_the_lanes_with_even_tokens() -> None:
    lengths = [5, 6, 8, 10, 12, 20, 30, 41]  # one micro-batch, in length order
    short, long_ = split_for_lanes([list(range(8))], lengths, 2)
    assert short + long_ == list(range(8))  # length order kept, nothing lost
    best = min(abs(sum(lengths[:cut]) - sum(lengths[cut:])) for cut in range(1, 8))
    assert abs(sum(lengths[i] for i in short) - sum(lengths[i] for i in long_)) == best
    five = [[0, 1], [2, 3], [4], [5], [6, 7]]
    six = split_for_lanes(five, lengths, 2)
    assert len(six) == 6 and [6] in six and [7] in six  # the heaviest pass was cut
    assert split_for_lanes(five, lengths, 1) == five
    assert split_for_lanes([[0], [1], [2]], lengths, 2) == [[0], [1], [2]]  # nothing left to cut
    # 31 short sentences beside one long one (padding kept them in two passes): not one lane's work.
    lopsided = [list(range(31)), [31]]
    parts = split_for_lanes(lopsided, [40] * 31 + [124], 2)
    assert sorted(index for part in parts for index in part) == list(range(32))
    assert len(parts) % 2 == 0 and max(40 * len(part) for part in parts if 31 not in part) <= 620


def test_forward_groups_bound_padding_and_size() -> None:
    lengths = [17, 12, 124, 20, 15, 60, 18, 22, 14, 16] * 4
    groups = group_by_length(lengths, max_batch=8, max_padding=0.25)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        assert len(group) <= 8
        padded = len(group) * max(lengths[i] for i in group)
        assert padded - sum(lengths[i] for i in group) <= 0.25 * padded
    # The long outliers never share a pass with the short sentences.
    assert all(
        {lengths[i] for i in group} & {124} == set() or min(lengths[i] for i in group) > 60
        for group in groups
    )
