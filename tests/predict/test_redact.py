"""Redaction: ``shared.predict.redact`` on its own (property-based), then ``POST /redact`` over HTTP
with the real tiny model and NER_REDACT_KEY set per test."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.core.config import get_settings
from shared.predict.redact import hash_token, redact, select
from shared.predict.schemas import Entity
from tests.predict.test_options import texts_with_entities
from tests.predict.test_predict import running_app, wait_for_model

KEY = b"k" * 32
HASH = re.compile(r"\[[0-9a-f]{16}\]")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts_with_entities(), st.sampled_from(["mask", "type", "hash"]))
def test_each_entity_is_replaced_and_nothing_else_changes(case: tuple[str, list[Entity]], mode: str) -> None:
    text, entities = case
    redacted = redact(text, entities, mode=mode, key=KEY)  # type: ignore[arg-type]
    # Rebuilt from the pieces between entities and each replacement: nothing else moved.
    expected, done = [], 0
    for entity in entities:
        expected.append(text[done : entity.start])
        expected.append(
            {
                "mask": "*" * len(entity.word),
                "type": f"[{entity.entity_group}]",
                "hash": hash_token(entity.word, key=KEY),
            }[mode]
        )
        done = entity.end
    expected.append(text[done:])
    assert redacted == "".join(expected)
    if mode == "mask":
        assert len(redacted) == len(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["Ann", "Bob", "Zoë", "東京", "😀x"]), min_size=1, max_size=12))
def test_hash_maps_equal_names_to_equal_tokens_and_depends_on_the_key(names: list[str]) -> None:
    text, entities = "", []
    for name in names:
        entities.append(
            Entity(word=name, entity_group="PER", score=0.9, start=len(text), end=len(text) + len(name))
        )
        text += name + " and "
    tokens = HASH.findall(redact(text, entities, mode="hash", key=KEY))
    assert len(tokens) == len(names)
    for (name_a, token_a), (name_b, token_b) in zip(
        zip(names, tokens, strict=True), zip(names[1:], tokens[1:], strict=True), strict=False
    ):
        assert (name_a == name_b) == (token_a == token_b)
    assert len(set(tokens)) == len(set(names))
    other = HASH.findall(redact(text, entities, mode="hash", key=b"another key, as long as the first"))
    assert all(a != b for a, b in zip(tokens, other, strict=True))


def test_only_the_types_asked_are_replaced_and_overlaps_are_skipped() -> None:
    text = "Ann met Bob in Paris"
    entities = [
        Entity(word="Ann", entity_group="PER", score=0.9, start=0, end=3),
        Entity(word="Bob", entity_group="PER", score=0.9, start=8, end=11),
        Entity(word="Paris", entity_group="LOC", score=0.9, start=15, end=20),
        Entity(word="Pa", entity_group="ORG", score=0.9, start=15, end=17),  # overlaps Paris
    ]
    assert redact(text, entities, mode="type", key=b"", types={"LOC"}) == "Ann met Bob in [LOC]"
    assert redact(text, entities, mode="mask", key=b"", mask_char="█") == "███ met ███ in █████"
    assert [e.word for e in select(entities)] == ["Ann", "Bob", "Paris"]
    with pytest.raises(ValueError, match="one character"):
        redact(text, entities, mode="mask", key=b"", mask_char="##")
    with pytest.raises(ValueError, match="key"):
        redact(text, entities, mode="hash", key=b"")


# --- POST /redact over HTTP, with the real tiny model --------------------------------------------

TEXT = "😀 Larry Page met Kofi Annan in Paris . Sergey Brin visited Berlin with Larry Page ."
NAMES = ["Larry Page", "Kofi Annan", "Paris", "Sergey Brin", "Berlin"]


@pytest.fixture(scope="module")
def client(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[TestClient]:
    with running_app({"NER_MODEL": str(tiny_model_dir), "NER_REDACT_KEY": KEY.decode()}) as app_client:
        wait_for_model(app_client)
        yield app_client


def _redact(client: TestClient, **body: object) -> dict:
    response = client.post("/redact", json={"text": TEXT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_type_redaction_leaves_no_entity_text(client: TestClient) -> None:
    found = client.post("/predict/", json={"text": TEXT}).json()["entities"]
    assert {e["word"] for e in found} >= {"Larry Page", "Paris"}, found
    body = _redact(client, mode="type")
    assert body["model_version"] is None
    assert body["entities"] == found  # offsets into the ORIGINAL text
    for entity in found:
        assert entity["word"] not in body["text"]
        assert TEXT[entity["start"] : entity["end"]] == entity["word"]
    assert "[PER]" in body["text"] and body["text"].startswith("😀 [PER] met")
    masked = _redact(client)  # mask is the default mode
    assert len(masked["text"]) == len(TEXT) and not any(e["word"] in masked["text"] for e in found)
    assert masked["text"][2:12] == "*" * 10


def test_hash_tokens_equal_for_equal_names_and_change_with_the_key(client: TestClient) -> None:
    body = _redact(client, mode="hash", labels=["PER"])
    pages = [e for e in body["entities"] if e["word"] == "Larry Page"]
    assert len(pages) == 2 and all(e["entity_group"] == "PER" for e in body["entities"])
    tokens = HASH.findall(body["text"])
    assert len(tokens) == len(body["entities"])
    by_name = dict(zip([e["word"] for e in body["entities"]], tokens, strict=True))
    assert tokens.count(by_name["Larry Page"]) == 2 and len(set(tokens)) == len(set(by_name))
    assert _redact(client, mode="hash", labels=["PER"])["text"] == body["text"]  # across requests too
    assert "Paris" in body["text"]  # not a PER: kept
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NER_REDACT_KEY", "a different key of 32 characters")
        get_settings.cache_clear()
        other = _redact(client, mode="hash", labels=["PER"])
    get_settings.cache_clear()
    assert [e["word"] for e in other["entities"]] == [e["word"] for e in body["entities"]]
    assert set(HASH.findall(other["text"])).isdisjoint(tokens)


def test_types_and_offsets_of_the_entities_redacted(client: TestClient) -> None:
    body = _redact(client, mode="type", types=["LOC"], offset_encoding="utf16")
    assert body["entities"] and {e["entity_group"] for e in body["entities"]} == {"LOC"}
    for entity in body["entities"]:  # UTF-16 offsets into the original text
        assert (
            TEXT.encode("utf-16-le")[2 * entity["start"] : 2 * entity["end"]].decode("utf-16-le")
            == entity["word"]
        )
        assert entity["word"] not in body["text"]
    assert "Larry Page" in body["text"] and "[LOC]" in body["text"]


@pytest.mark.parametrize(
    ("body", "field", "allowed"),
    [
        ({"mode": "erase"}, "mode", "'mask', 'type' or 'hash'"),
        ({"types": ["GPE"]}, "types", "allowed values: LOC, MISC, ORG, PER"),
        ({"labels": ["DATE"]}, "labels", "allowed values: LOC, MISC, ORG, PER"),
        ({"mask_char": "##"}, "mask_char", "at most 1"),
        ({"offset_encoding": "bytes"}, "offset_encoding", "utf8"),
        ({"min_score": 7}, "min_score", "0 to 1"),
        ({"text": ""}, "text", "at least 1"),
    ],
)
def test_bad_redact_requests_are_422_naming_the_field(
    client: TestClient, body: dict, field: str, allowed: str
) -> None:
    response = client.post("/redact", json={"text": TEXT, **body})
    assert response.status_code == 422, response.text
    assert field in response.text and allowed in response.text, response.text


def test_hash_without_a_key_is_503_naming_the_setting_and_the_key_is_never_shown(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        _redact(client, mode="hash")
    assert KEY.decode() not in caplog.text and KEY.decode() not in repr(get_settings())
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("NER_REDACT_KEY")
        get_settings.cache_clear()
        response = client.post("/redact", json={"text": TEXT, "mode": "hash"})
        assert response.status_code == 503 and "NER_REDACT_KEY" in response.json()["detail"]
        assert client.post("/redact", json={"text": TEXT, "mode": "type"}).status_code == 200
    get_settings.cache_clear()
