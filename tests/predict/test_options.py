"""The per-request output options: offset units, type filters and score thresholds.

Property-based over texts with emoji, CJK and combining marks (the pure functions), then over
HTTP against the real tiny model (what callers get from /predict/ and /predict/batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.predict.errors import UnknownLabel
from shared.predict.options import (
    OFFSET_ENCODINGS,
    OutputOptions,
    apply_options,
    check_labels,
    entity_types,
    keep,
    offset_converter,
)
from shared.predict.schemas import Entity
from tests.predict.test_predict import running_app, wait_for_model

TYPES = ["PER", "ORG", "LOC", "MISC"]

# Characters that take 1, 2, 3 and 4 bytes in UTF-8 and 1 or 2 code units in UTF-16: ASCII,
# accents, combining marks, CJK, emoji (one, a ZWJ sequence and a flag), astral CJK.
PIECES = [
    "a",
    "Z",
    " ",
    "\n",
    "é",
    "e\u0301",
    "\u0308",
    "東京",
    "北京市",
    "😀",
    "👩\u200d💻",
    "🇫🇷",
    "𠀋",
    "\u00a0",
    "ß",
    "Ω",
]


def _sliced(text: str, start: int, end: int, encoding: str) -> str:
    """``text`` encoded in ``encoding``'s unit, cut at ``start:end``, decoded back."""
    if encoding == "utf8":
        return text.encode("utf-8")[start:end].decode("utf-8")
    if encoding == "utf16":
        return text.encode("utf-16-le")[2 * start : 2 * end].decode("utf-16-le")
    return text[start:end]


@st.composite
def texts_with_entities(draw: st.DrawFn) -> tuple[str, list[Entity]]:
    """A text of mixed scripts and non-overlapping entities at codepoint offsets (as the engine gives)."""
    text = "".join(draw(st.lists(st.sampled_from(PIECES) | st.text(max_size=3), min_size=1, max_size=40)))
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=12)))
    entities = []
    for start, end in zip(cuts[::2], cuts[1::2], strict=False):
        if end > start:
            entities.append(
                Entity(
                    word=text[start:end],
                    entity_group=draw(st.sampled_from(TYPES)),
                    score=draw(st.floats(0, 1)),
                    start=start,
                    end=end,
                )
            )
    return text, entities


scores = st.floats(0, 1)
options_strategy = st.builds(
    OutputOptions,
    offset_encoding=st.sampled_from(OFFSET_ENCODINGS),
    labels=st.none() | st.lists(st.sampled_from(TYPES), min_size=1, unique=True),
    min_score=st.none()
    | scores
    | st.dictionaries(st.sampled_from([*TYPES, "*"]), scores, max_size=len(TYPES) + 1),
) | st.builds(
    OutputOptions,
    exclude_labels=st.none() | st.lists(st.sampled_from(TYPES), unique=True),
    min_score=st.none() | scores,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts_with_entities(), st.sampled_from(OFFSET_ENCODINGS))
def test_slicing_the_encoded_text_at_start_end_gives_the_word(
    case: tuple[str, list[Entity]], encoding: str
) -> None:
    text, entities = case
    converted = apply_options(text, entities, OutputOptions(offset_encoding=encoding))  # type: ignore[arg-type]
    assert len(converted) == len(entities)
    for before, after in zip(entities, converted, strict=True):
        assert after.word == before.word  # the caller's characters, whatever the unit
        assert (after.entity_group, after.score) == (before.entity_group, before.score)
        assert _sliced(text, after.start, after.end, encoding) == after.word


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts_with_entities(), options_strategy)
def test_filters_drop_entities_and_never_change_the_ones_left(
    case: tuple[str, list[Entity]], options: OutputOptions
) -> None:
    text, entities = case
    result = apply_options(text, entities, options)
    expected = [e for e in entities if keep(e, options)]
    # Exactly the entities that pass, in order, each one otherwise as decoded.
    assert [(e.word, e.entity_group, e.score) for e in result] == [
        (e.word, e.entity_group, e.score) for e in expected
    ]
    positions = offset_converter(
        text, [p for e in expected for p in (e.start, e.end)], options.offset_encoding
    )
    assert [(e.start, e.end) for e in result] == [(positions[e.start], positions[e.end]) for e in expected]
    for entity in result:
        if options.labels is not None:
            assert entity.entity_group in options.labels
        if options.exclude_labels:
            assert entity.entity_group not in options.exclude_labels
        threshold = options.min_score
        if isinstance(threshold, dict):
            threshold = threshold.get(entity.entity_group, threshold.get("*"))
        assert threshold is None or entity.score >= threshold
    # Filtering first and converting after is the same as converting everything and filtering.
    everything = apply_options(text, entities, OutputOptions(offset_encoding=options.offset_encoding))
    assert result == [
        converted for original, converted in zip(entities, everything, strict=True) if keep(original, options)
    ]


def test_offsets_of_a_known_text() -> None:
    text = "😀 Zoë Müller met 東京 e\u0301 👩\u200d💻 Ann"
    names = [("Zoë Müller", "PER"), ("東京", "LOC"), ("Ann", "PER")]
    entities = [
        Entity(word=w, entity_group=t, score=0.9, start=text.index(w), end=text.index(w) + len(w))
        for w, t in names
    ]
    spans = {
        enc: [(e.start, e.end) for e in apply_options(text, entities, OutputOptions(offset_encoding=enc))]
        for enc in OFFSET_ENCODINGS
    }
    assert spans["codepoint"] == [(2, 12), (17, 19), (27, 30)]
    assert spans["utf16"] == [(3, 13), (18, 20), (30, 33)]  # 😀, 👩 and 💻 are two code units each
    # 😀 4 bytes, ë and ü 2 each, 東京 3 each, the combining accent 2, 👩 and 💻 4 each, the ZWJ 3.
    assert spans["utf8"] == [(5, 17), (22, 28), (45, 48)]


def test_bad_options_are_refused_naming_the_field() -> None:
    cases = [
        ({"offset_encoding": "utf32"}, "offset_encoding", "'codepoint', 'utf16' or 'utf8'"),
        ({"min_score": 1.5}, "min_score", "0 to 1"),
        ({"min_score": -0.1}, "min_score", "0 to 1"),
        ({"min_score": float("nan")}, "min_score", "0 to 1"),
        ({"min_score": True}, "min_score", "0 to 1"),
        ({"min_score": {"PER": 2}}, "min_score['PER']", "0 to 1"),
        ({"min_score": "high"}, "min_score", "0 to 1"),
        ({"labels": []}, "labels", "at least 1"),
        ({"labels": ["PER"], "exclude_labels": ["ORG"]}, "exclude_labels", "not both"),
    ]
    for payload, field, allowed in cases:
        with pytest.raises(ValidationError) as info:
            OutputOptions.model_validate(payload)
        message = str(info.value)
        assert field in message and allowed in message, (payload, message)


def test_unknown_types_are_422_naming_the_field_and_the_allowed_values() -> None:
    known = entity_types(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    assert known == ["LOC", "PER"]
    check_labels(OutputOptions(labels=["PER"], min_score={"LOC": 0.5, "*": 0.2}), known=known)
    for options, field in [
        (OutputOptions(labels=["PER", "GPE"]), "labels"),
        (OutputOptions(exclude_labels=["per"]), "exclude_labels"),
        (OutputOptions(min_score={"ORG": 0.5}), "min_score"),
    ]:
        with pytest.raises(UnknownLabel) as info:
            check_labels(options, known=known)
        assert info.value.status_code == 422
        assert str(info.value).startswith(f"{field}: ") and "allowed values: LOC, PER" in str(info.value)


# --- over HTTP, with the real tiny model ---------------------------------------------------------

EMOJI_TEXT = "😀👍 Larry Page met Kofi Annan in Paris . 東京 Sergey Brin e\u0301 visited Berlin ."


@pytest.fixture(scope="module")
def client(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[TestClient]:
    with running_app({"NER_MODEL": str(tiny_model_dir)}) as app_client:
        wait_for_model(app_client)
        yield app_client


def _post(client: TestClient, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_predict_answers_offsets_in_the_unit_asked(client: TestClient) -> None:
    plain = _post(client, "/predict/", {"text": EMOJI_TEXT})["entities"]
    assert {e["word"] for e in plain} >= {"Larry Page", "Paris"}, plain
    for encoding in OFFSET_ENCODINGS:
        entities = _post(client, "/predict/", {"text": EMOJI_TEXT, "offset_encoding": encoding})["entities"]
        assert [(e["word"], e["entity_group"], e["score"]) for e in entities] == [
            (e["word"], e["entity_group"], e["score"]) for e in plain
        ]
        for entity in entities:
            assert _sliced(EMOJI_TEXT, entity["start"], entity["end"], encoding) == entity["word"]
    batch = _post(client, "/predict/batch", {"texts": [EMOJI_TEXT, "Paris"], "offset_encoding": "utf16"})
    first = batch["results"][0]["entities"]
    assert first == _post(client, "/predict/", {"text": EMOJI_TEXT, "offset_encoding": "utf16"})["entities"]
    assert first[0]["start"] == plain[0]["start"] + 2  # two emoji before it: two extra code units


def test_predict_filters_by_type_and_score_without_changing_the_rest(client: TestClient) -> None:
    plain = _post(client, "/predict/", {"text": EMOJI_TEXT})["entities"]
    types = {e["entity_group"] for e in plain}
    assert "PER" in types and len(types) > 1, plain
    only = _post(client, "/predict/", {"text": EMOJI_TEXT, "labels": ["PER"]})["entities"]
    assert only == [e for e in plain if e["entity_group"] == "PER"]
    without = _post(client, "/predict/", {"text": EMOJI_TEXT, "exclude_labels": ["PER"]})["entities"]
    assert without == [e for e in plain if e["entity_group"] != "PER"]
    cut = sorted(e["score"] for e in plain)[len(plain) // 2]
    sure = _post(client, "/predict/", {"text": EMOJI_TEXT, "min_score": cut})["entities"]
    assert sure == [e for e in plain if e["score"] >= cut] and 0 < len(sure) < len(plain) + 1
    per_type = _post(client, "/predict/", {"text": EMOJI_TEXT, "min_score": {"PER": 1.0, "*": 0.0}})[
        "entities"
    ]
    assert per_type == [e for e in plain if e["entity_group"] != "PER" or e["score"] >= 1.0]
    batch = _post(client, "/predict/batch", {"texts": [EMOJI_TEXT], "labels": ["PER"]})
    assert batch["results"][0]["entities"] == only


@pytest.mark.parametrize(
    ("body", "field", "allowed"),
    [
        ({"offset_encoding": "utf32"}, "offset_encoding", "utf16"),
        ({"min_score": 1.01}, "min_score", "0 to 1"),
        ({"min_score": {"PER": -1}}, "min_score", "0 to 1"),
        ({"labels": ["PER"], "exclude_labels": ["LOC"]}, "exclude_labels", "not both"),
    ],
)
def test_bad_options_over_http_are_422_naming_the_field(
    client: TestClient, body: dict, field: str, allowed: str
) -> None:
    for path, text in [("/predict/", {"text": "Paris"}), ("/predict/batch", {"texts": ["Paris"]})]:
        response = client.post(path, json={**text, **body})
        assert response.status_code == 422, response.text
        assert field in response.text and allowed in response.text, response.text


def test_an_unknown_type_is_422_with_the_models_types(client: TestClient) -> None:
    for path, text in [("/predict/", {"text": "Paris"}), ("/predict/batch", {"texts": ["Paris"]})]:
        for field, value in [("labels", ["GPE"]), ("exclude_labels", ["DATE"]), ("min_score", {"GPE": 0.5})]:
            response = client.post(path, json={**text, field: value})
            assert response.status_code == 422, response.text
            detail = response.json()["detail"]
            assert detail.startswith(f"{field}: ") and "allowed values: LOC, MISC, ORG, PER" in detail
