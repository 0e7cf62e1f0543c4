"""Word-level decoding: sub-token probabilities to entity groups with offsets into the caller's text."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np

from shared.predict.schemas import Entity


def split_tag(label: str) -> tuple[str, str]:
    """``B-PER`` -> (``B``, ``PER``); a label without a B-/I- prefix continues like I- (as the pipeline)."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _extend_over_marks(text: str, end: int) -> int:
    # Tokenizers that strip accents end a word's offsets before its trailing combining marks
    # ("cafe" + U+0301); the caller wrote them as part of the word, so the span keeps them.
    while end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end += 1
    return end


def decode_entities(
    text: str,
    word_ids: Sequence[int | None],
    offsets: Sequence[tuple[int, int]],
    probs: np.ndarray,
    id2label: Mapping[int, str],
    ignore: frozenset[str] = frozenset({"O"}),
) -> list[Entity]:
    """Group words into entities; a word takes the label and score of its FIRST sub-token.

    ``probs`` holds one row of label probabilities per token. Groups follow the transformers
    pipeline's ``aggregation_strategy="first"``: a B- tag or a change of type starts a new group,
    a group's score is the mean of its words' scores.
    """
    if len(word_ids) == 0:
        return []
    best = probs.argmax(axis=-1)
    best_scores = probs[np.arange(len(best)), best]
    # words: [label, score, start, end], in text order
    words: list[list] = []
    previous: int | None = None
    for index, word_id in enumerate(word_ids):
        if word_id is None:
            continue
        start, end = offsets[index]
        if word_id != previous:
            words.append([id2label[int(best[index])], float(best_scores[index]), start, end])
            previous = word_id
        else:
            words[-1][3] = max(words[-1][3], end)
    entities: list[Entity] = []
    group: list[list] = []
    for word in words:
        if group:
            bi, tag = split_tag(word[0])
            if tag == split_tag(group[-1][0])[1] and bi != "B":
                group.append(word)
                continue
            entities.extend(_close_group(text, group, ignore))
        group = [word]
    entities.extend(_close_group(text, group, ignore))
    return entities


def _close_group(text: str, group: list[list], ignore: frozenset[str]) -> list[Entity]:
    if not group:
        return []
    entity_group = split_tag(group[0][0])[1]
    if entity_group in ignore or group[0][0] in ignore:
        return []
    start = group[0][2]
    end = _extend_over_marks(text, group[-1][3])
    score = float(np.mean([word[1] for word in group]))
    return [Entity(word=text[start:end], entity_group=entity_group, score=score, start=start, end=end)]
