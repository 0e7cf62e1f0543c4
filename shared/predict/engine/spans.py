"""Word-level decoding: each word's first sub-token to entity groups with offsets into the caller's text."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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


# A caller's line break ends a sentence, a headline or a dateline: no entity runs across one.
_LINE_BREAK = re.compile("[\n\r\v\f\x85\u2028\u2029]")


def decode_entities(
    text: str,
    spans: Sequence[tuple[int, int]],
    first: Sequence[int | None],
    probs: np.ndarray,
    id2label: Mapping[int, str],
    ignore: frozenset[str] = frozenset({"O"}),
) -> list[Entity]:
    """Group words (``words.split_words``) into entities; a word takes the label of its FIRST sub-token.

    ``first[w]`` is the row of ``probs`` that speaks for word ``w`` (``words.first_tokens``), the
    position training labelled. IOB repair: a B- tag, a change of type, an O or a line break ends a
    group, and an I- tag without a group starts one. A word without a sub-token of its own (glued by
    the tokenizer to the word before) joins a group between two of its words, and letters glued onto
    its end join it too: ``O'Neill`` and ``Collomb-Patton`` stay one name, the comma of ``Paris,``
    stays outside. A group's score is the mean of its labelled words' scores.
    """
    if not spans:
        return []
    best = probs.argmax(axis=-1)
    best_scores = probs[np.arange(len(best)), best]
    entities: list[Entity] = []
    group: _Group | None = None
    for (start, end), token in zip(spans, first, strict=True):
        if token is None:
            # A glued word: inside the group if the group goes on after it, or up to the last
            # letters glued onto the group's last word ("▁Collomb-Patton" as one piece); glued
            # punctuation after them stays out ("▁Paris,").
            if group is not None:
                group.glued.append((start, end))
            continue
        label = id2label[int(best[token])]
        bi, kind = split_tag(label)
        outside = label in ignore or kind in ignore
        if group is not None:
            if (
                not outside
                and bi != "B"
                and kind == group.kind
                and not _LINE_BREAK.search(text, group.end, start)
            ):
                group.end = end
                group.glued.clear()
                group.scores.append(float(best_scores[token]))
                continue
            entities.append(group.entity(text))
            group = None
        if not outside:
            group = _Group(kind, start, end, [float(best_scores[token])])
    if group is not None:
        entities.append(group.entity(text))
    return entities


@dataclass
class _Group:
    kind: str
    start: int
    end: int
    scores: list[float]
    glued: list[tuple[int, int]] = field(default_factory=list)  # words after ``end`` without a sub-token

    def entity(self, text: str) -> Entity:
        end = reach = self.end
        for start, glued_end in self.glued:  # up to the last letters of the glued run
            if start != reach:
                break
            reach = glued_end
            if glued_end - start > 1 or text[start].isalnum():
                end = glued_end
        end = _extend_over_marks(text, end)
        return Entity(
            word=text[self.start : end],
            entity_group=self.kind,
            score=float(np.mean(self.scores)),
            start=self.start,
            end=end,
        )
