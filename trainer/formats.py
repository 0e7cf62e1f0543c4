"""Training data from annotation tools: character spans over a text become words with IOB2 tags.

- Label Studio's JSON export: a JSON array of tasks, ``{"data": {"text": ...}, "annotations":
  [{"result": [{"type": "labels", "value": {"start", "end", "labels": [TYPE]}}]}]}``; the last
  annotation of a task that was not cancelled is used, tasks without one are skipped.
- doccano JSONL: ``{"text": ..., "label": [[start, end, TYPE], ...]}``.
- spaCy-style JSONL: ``{"text": ..., "spans": [{"start", "end", "label"}, ...]}``.

Words are the engine's words (``shared.predict.engine.words.split_words``), so what the model is
trained to label is what it decodes. A span must cover whole words (surrounding spaces are
trimmed); a span that cuts a word, overlaps another or is not a bare type stops the run with a
:class:`DataError` naming the file and line, as a bad CoNLL line does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.predict.engine.words import split_words
from shared.training.errors import DataError

LABEL_STUDIO, DOCCANO, SPACY = "label-studio", "doccano", "spacy"
FORMATS = (LABEL_STUDIO, DOCCANO, SPACY)

Record = tuple[list[str], list[str], int]  # words, IOB2 tags, line of the record


def detect(path: Path) -> str | None:
    """Which annotation-tool format ``path`` is in, from its first record; None for any other."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("["):
                return LABEL_STUDIO
            try:
                record = json.loads(stripped)
            except ValueError:
                return None  # not JSONL (CoNLL), or a broken line the JSONL reader will name
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                if "label" in record:
                    return DOCCANO
                if "spans" in record:
                    return SPACY
            return None
    return None


def spans_to_tags(text: str, spans: list[tuple[int, int, str]], where: str) -> tuple[list[str], list[str]]:
    """The words of ``text`` and their IOB2 tags; each span ``(start, end, TYPE)`` covers whole words."""
    words = split_words(text)
    tags = ["O"] * len(words)
    first_of = {start: i for i, (start, _) in enumerate(words)}
    last_of = {end: i for i, (_, end) in enumerate(words)}
    for start, end, label in sorted(spans):
        shown = f"{text[start:end]!r} [{start}:{end}]"
        if not label or label == "O" or label[:2] in ("B-", "I-") or any(c.isspace() for c in label):
            raise DataError(f"{where}: span {shown} has label {label!r}; expected a bare type such as PER")
        # Annotators often take the space next to a word along: trim it, never a visible character.
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        first, last = first_of.get(start), last_of.get(end)
        if start == end or first is None or last is None:
            raise DataError(f"{where}: span {shown} does not start and end on word boundaries")
        if any(tag != "O" for tag in tags[first : last + 1]):
            raise DataError(f"{where}: span {shown} overlaps another span")
        tags[first : last + 1] = [f"B-{label}"] + [f"I-{label}"] * (last - first)
    return [text[s:e] for s, e in words], tags


def _span(value: Any, text: str, where: str) -> tuple[int, int]:
    start, end = value
    if not (
        isinstance(start, int)
        and isinstance(end, int)
        and not isinstance(start, bool)
        and not isinstance(end, bool)
        and 0 <= start < end <= len(text)
    ):
        raise DataError(
            f"{where}: span [{start!r}, {end!r}] is not within the text (0 <= start < end <= {len(text)})"
        )
    return start, end


def _doccano_spans(record: dict[str, Any], text: str, where: str) -> list[tuple[int, int, str]]:
    labels = record.get("label")
    if not isinstance(labels, list):
        raise DataError(f"{where}: 'label' must be a list of [start, end, TYPE]")
    spans = []
    for item in labels:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], str)):
            raise DataError(f"{where}: each label must be [start, end, TYPE], got {item!r}")
        spans.append((*_span(item[:2], text, where), item[2]))
    return spans


def _spacy_spans(record: dict[str, Any], text: str, where: str) -> list[tuple[int, int, str]]:
    items = record.get("spans")
    if not isinstance(items, list):
        raise DataError(f"{where}: 'spans' must be a list of {{start, end, label}}")
    spans = []
    for item in items:
        if not (isinstance(item, dict) and {"start", "end", "label"} <= set(item)) or not isinstance(
            item["label"], str
        ):
            raise DataError(f"{where}: each span needs 'start', 'end' and a string 'label', got {item!r}")
        spans.append((*_span((item["start"], item["end"]), text, where), item["label"]))
    return spans


def json_lines(path: Path) -> Iterator[tuple[Any, str, int]]:
    """(record, ``file:line``, line) of each non-blank line of a JSONL file; bad JSON names its line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield json.loads(line), where, number
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None


def _iter_jsonl(path: Path, kind: str) -> Iterator[Record]:
    read = _doccano_spans if kind == DOCCANO else _spacy_spans
    for record, where, number in json_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{where}: expected a JSON object with a string 'text'")
        words, tags = spans_to_tags(record["text"], read(record, record["text"], where), where)
        if words:
            yield words, tags, number


def _array_items(content: str, path: Path) -> Iterator[tuple[Any, int]]:
    """The elements of a top-level JSON array with the line each starts on (for error messages)."""
    decoder = json.JSONDecoder()
    position = content.index("[") + 1

    def skip(position: int) -> int:
        while position < len(content) and content[position].isspace():
            position += 1
        return position

    position = skip(position)
    if position < len(content) and content[position] == "]":
        return
    while True:
        line = content.count("\n", 0, position) + 1
        try:
            item, position = decoder.raw_decode(content, position)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        yield item, line
        position = skip(position)
        if position < len(content) and content[position] == ",":
            position = skip(position + 1)
            continue
        if position < len(content) and content[position] == "]":
            return
        raise DataError(
            f"{path}:{content.count(chr(10), 0, position) + 1}: expected ',' or ']' in the task list"
        )


def _task_text(data: Any, regions: list[dict[str, Any]], where: str) -> str:
    """The text a task's regions label: ``data.text``, else the one data field they fit."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: 'data' must be an object holding the task's text")
    candidates = [key for key, value in data.items() if isinstance(value, str) and value]
    if "text" in candidates:
        candidates = ["text", *(key for key in candidates if key != "text")]
    for key in candidates:
        text = data[key]
        if all(
            not isinstance(r.get("value", {}).get("text"), str)
            or text[r["value"].get("start", 0) : r["value"].get("end", 0)] == r["value"]["text"]
            for r in regions
            if isinstance(r.get("value"), dict) and isinstance(r["value"].get("start"), int)
        ):
            return text
    raise DataError(f"{where}: no text field in 'data' that the annotation's regions fit")


def _iter_label_studio(path: Path) -> Iterator[Record]:
    content = path.read_text(encoding="utf-8")
    for index, (task, number) in enumerate(_array_items(content, path)):
        if not isinstance(task, dict):
            raise DataError(f"{path}:{number}: task {index} is not a JSON object")
        where = f"{path}:{number}: task {task.get('id', index)}"
        annotations = task.get("annotations") or task.get("completions") or []
        if not isinstance(annotations, list):
            raise DataError(f"{where}: 'annotations' must be a list")
        usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        if not usable:
            continue  # an unannotated task teaches nothing
        result = usable[-1].get("result", [])
        if not isinstance(result, list):
            raise DataError(f"{where}: an annotation's 'result' must be a list of regions")
        regions = [r for r in result if isinstance(r, dict) and r.get("type") == "labels"]
        text = _task_text(task.get("data"), regions, where)
        spans = []
        for region in regions:
            value = region.get("value")
            labels = value.get("labels") if isinstance(value, dict) else None
            if not (isinstance(labels, list) and len(labels) == 1 and isinstance(labels[0], str)):
                raise DataError(
                    f"{where}: region {region.get('id')!r} needs value.labels with exactly one type"
                )
            spans.append((*_span((value.get("start"), value.get("end")), text, where), labels[0]))
        words, tags = spans_to_tags(text, spans, where)
        if words:
            yield words, tags, number


def iter_records(path: Path, kind: str) -> Iterator[Record]:
    """(words, IOB2 tags, line) of each annotated text of a file in one of :data:`FORMATS`."""
    if kind == LABEL_STUDIO:
        yield from _iter_label_studio(path)
    elif kind in (DOCCANO, SPACY):
        yield from _iter_jsonl(path, kind)
    else:
        raise ValueError(f"unknown format {kind!r}; expected one of {FORMATS}")
