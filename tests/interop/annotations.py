"""CoNLL sentences written out as annotation tools export them (Label Studio, doccano, spaCy)."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.conll import Sentence, read_conll


def sentence_spans(sentence: Sentence) -> tuple[str, list[tuple[int, int, str]]]:
    """The sentence's text (tokens joined by spaces) and its entities as character spans."""
    text, spans, offsets = "", [], []
    for token in sentence.tokens:
        if text:
            text += " "
        offsets.append((len(text), len(text) + len(token)))
        text += token
    current: list[int] | None = None
    for (start, end), tag in zip(offsets, sentence.tags, strict=True):
        if tag.startswith("B-") or tag == "O":
            if current:
                spans.append((current[0], current[1], current[2]))
            current = [start, end, tag[2:]] if tag != "O" else None
        elif current:
            current[1] = end
    if current:
        spans.append((current[0], current[1], current[2]))
    return text, spans


def entity_sentences(conll_file: Path, count: int, max_words: int = 25) -> list[Sentence]:
    pool = [s for s in read_conll(conll_file, limit=count * 6) if any(t != "O" for t in s.tags)]
    return [s for s in pool if len(s.tokens) <= max_words][:count]


def label_studio_task(task_id: int, text: str, spans: list[tuple[int, int, str]]) -> dict:
    """One task as Label Studio's JSON export writes it (one annotation, ``labels`` regions)."""
    return {
        "id": task_id,
        "data": {"text": text},
        "annotations": [
            {
                "id": task_id * 10,
                "was_cancelled": False,
                "result": [
                    {
                        "id": f"r{task_id}-{i}",
                        "from_name": "label",
                        "to_name": "text",
                        "type": "labels",
                        "origin": "manual",
                        "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]},
                    }
                    for i, (s, e, label) in enumerate(spans)
                ],
            }
        ],
        "predictions": [],
    }


def write_label_studio(path: Path, sentences: list[Sentence]) -> Path:
    tasks = [label_studio_task(i + 1, *sentence_spans(s)) for i, s in enumerate(sentences)]
    path.write_text(json.dumps(tasks, indent=2), encoding="utf-8")
    return path


def write_doccano(path: Path, sentences: list[Sentence]) -> Path:
    lines = []
    for s in sentences:
        text, spans = sentence_spans(s)
        lines.append(json.dumps({"text": text, "label": [[a, b, t] for a, b, t in spans]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_spacy(path: Path, sentences: list[Sentence]) -> Path:
    lines = []
    for s in sentences:
        text, spans = sentence_spans(s)
        lines.append(
            json.dumps({"text": text, "spans": [{"start": a, "end": b, "label": t} for a, b, t in spans]})
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
