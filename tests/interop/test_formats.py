"""Training data from annotation tools: Label Studio JSON export, doccano JSONL, spaCy-style JSONL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.core.config import get_settings
from shared.predict.engine.words import split_words
from shared.training.errors import DataError
from shared.training.references import DataSpec
from tests.interop.annotations import entity_sentences, write_doccano, write_label_studio, write_spacy
from trainer import formats
from trainer.conll import iter_conll_lines
from trainer.data import iter_file, load_data

WRITERS = {"label-studio": write_label_studio, "doccano": write_doccano, "spacy": write_spacy}
SUFFIX = {"label-studio": ".json", "doccano": ".jsonl", "spacy": ".jsonl"}


def _expected(sentences) -> list[tuple[list[str], list[str]]]:  # type: ignore[no-untyped-def]
    """The engine's words of each sentence's text with the CoNLL tags spread over them."""
    from shared.predict.engine.words import piece_tags

    out = []
    for s in sentences:
        words, tags = [], []
        for token, tag in zip(s.tokens, s.tags, strict=True):
            for start, end, piece_tag in piece_tags(token, tag):
                words.append(token[start:end])
                tags.append(piece_tag)
        out.append((words, tags))
    return out


@pytest.mark.parametrize("kind", list(WRITERS))
def test_each_format_reads_back_the_conll_tags(kind: str, tmp_path: Path) -> None:
    sentences = entity_sentences(get_settings().conll_dir / "eng.testa", 30)
    path = WRITERS[kind](tmp_path / f"train{SUFFIX[kind]}", sentences)
    assert formats.detect(path) == kind
    rows = list(iter_file(path))
    assert [(r["tokens"], r["tags"]) for r in rows] == _expected(sentences)
    assert all(r["origin"].startswith(f"{path}:") for r in rows)


def test_a_plain_conll_file_and_the_text_entities_jsonl_are_not_taken(tmp_path: Path) -> None:
    conll = get_settings().conll_dir / "eng.testa"
    assert formats.detect(conll) is None
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        json.dumps({"text": "Paris is big.", "entities": [{"start": 0, "end": 5, "label": "LOC"}]})
    )
    assert formats.detect(jsonl) is None
    assert [r["tags"] for r in iter_file(jsonl)] == [["B-LOC", "O", "O", "O"]]
    assert next(iter_conll_lines(conll))[0].tokens  # unchanged path for CoNLL


def test_label_studio_uses_the_last_kept_annotation_and_skips_unannotated_tasks(tmp_path: Path) -> None:
    text = "Kofi Annan visited Nairobi ."
    region = {"type": "labels", "value": {"start": 0, "end": 11, "text": "Kofi Annan ", "labels": ["PER"]}}
    cancelled = {
        "was_cancelled": True,
        "result": [{"type": "labels", "value": {"start": 19, "end": 26, "labels": ["ORG"]}}],
    }
    tasks = [
        {"id": 1, "data": {"text": "No annotation here."}, "annotations": []},
        {"id": 2, "data": {"title": "x", "text": text}, "annotations": [{"result": [region]}, cancelled]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    rows = list(iter_file(path))
    # The trailing space of the selection is trimmed; the cancelled annotation is ignored.
    assert [(r["tokens"], r["tags"]) for r in rows] == [
        (["Kofi", "Annan", "visited", "Nairobi", "."], ["B-PER", "I-PER", "O", "O", "O"])
    ]
    assert rows[0]["origin"] == f"{path}:1"


BAD = [
    (
        "doccano",
        '{"text": "Paris is big.", "label": [[0, 5, "LOC"]]}\n{"text": "Rome", "label": [[0, 9, "LOC"]]}\n',
        ":2: span [0, 9] is not within the text",
    ),
    (
        "doccano",
        '{"text": "Paris is big.", "label": [[0, 3, "LOC"]]}\n',
        ":1: span 'Par' [0:3] does not start and end on word boundaries",
    ),
    (
        "doccano",
        '{"text": "Paris is big.", "label": [[0, 5, "B-LOC"]]}\n',
        ":1: span 'Paris' [0:5] has label 'B-LOC'",
    ),
    (
        "doccano",
        '{"text": "Paris is big.", "label": [[0, 5, "LOC"], [0, 8, "ORG"]]}\n',
        "overlaps another span",
    ),
    ("doccano", '{"text": "Paris", "label": "LOC"}\n', ":1: 'label' must be a list"),
    (
        "spacy",
        '{"text": "Paris", "spans": [{"start": 0, "end": 5, "label": "LOC"}]}\n'
        '{"text": "x", "spans": [{"start": 0}]}\n',
        ":2: each span needs 'start', 'end' and a string 'label'",
    ),
    (
        "spacy",
        '{"text": "Paris", "spans": [{"start": 0, "end": 5, "label": "LOC"}]}\n{broken\n',
        ":2: not valid JSON",
    ),
]


@pytest.mark.parametrize(("kind", "content", "message"), BAD)
def test_bad_lines_stop_the_read_naming_file_and_line(
    kind: str, content: str, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert formats.detect(path) == kind
    with pytest.raises(DataError) as info:
        list(iter_file(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_label_studio_errors_name_the_line_of_the_task(tmp_path: Path) -> None:
    good = {"id": 1, "data": {"text": "Paris"}, "annotations": [{"result": []}]}
    bad = {
        "id": 7,
        "data": {"text": "Paris is big."},
        "annotations": [{"result": [{"type": "labels", "value": {"start": 0, "end": 5, "labels": []}}]}],
    }
    path = tmp_path / "export.json"
    path.write_text("[\n" + json.dumps(good) + ",\n\n" + json.dumps(bad) + "\n]\n")
    with pytest.raises(DataError, match=r"export\.json:4: task 7: .*exactly one type"):
        list(iter_file(path))
    path.write_text('[{"id": 1, "data": {"text": "a"}, "annotations": []}, {"id": 2,\n "data": }]')
    with pytest.raises(DataError, match=r"export\.json:2: not valid JSON"):
        list(iter_file(path))


def test_load_data_takes_a_label_studio_export_with_its_label_set(tmp_path: Path) -> None:
    sentences = entity_sentences(get_settings().conll_dir / "eng.train", 40)
    path = write_label_studio(tmp_path / "project-1.json", sentences)
    data = load_data(DataSpec(train=str(path)), roots=None, cache_dir=tmp_path / "cache")
    assert data.sentences("train") + data.sentences("validation") == 40
    types = {t[2:] for s in sentences for t in s.tags if t != "O"}
    assert data.labels == ["O"] + [f"{p}-{t}" for t in sorted(types) for p in ("B", "I")]
    assert split_words("Collomb-Patton") == [(0, 7), (7, 8), (8, 14)]  # the words the tags are on


@pytest.mark.slow
def test_ner_train_runs_on_a_label_studio_export(tmp_path: Path, service_env: dict[str, str]) -> None:
    """``ner train --train export.json``: a real (tiny) run, its model folder written."""
    conll = get_settings().conll_dir
    train = write_label_studio(
        tmp_path / "train.json", entity_sentences(conll / "eng.train", 48, max_words=15)
    )
    dev = write_doccano(tmp_path / "dev.jsonl", entity_sentences(conll / "eng.testa", 16, max_words=15))
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "train", "--train", str(train), "--validation", str(dev),
         "--out", str(out), "--epochs", "1", "--batch-size", "16", "--max-length", "64",
         "--context-tokens", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert set(config["id2label"].values()) >= {"B-PER", "I-PER", "B-LOC", "O"}
