"""What a word is, for training and serving alike: the units the model labels and the engine decodes.

A word is a run of letters and digits (with their combining marks), or any other single visible
character: ``Collomb-Patton`` is ``Collomb`` ``-`` ``Patton``, ``1.`` is ``1`` ``.``, ``Paris,`` is
``Paris`` ``,`` and ``O'Neill`` is ``O`` ``'`` ``Neill``. The definition depends on no tokenizer, so a
model trained on one encoder's sub-tokens and served with the same files decodes exactly the
positions it was trained on; ``trainer.encoding`` and ``engine.NerEngine`` both call
:func:`first_tokens` and nothing else to decide which sub-token speaks for a word.

Pure Python, no torch: the trainer and tests import it freely.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence

# Letters and digits (``\w`` without the underscore), or one other non-space character.
_PIECE = re.compile(r"[^\W_]+|\S")


def _is_mark(char: str) -> bool:
    return unicodedata.category(char).startswith("M")


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the words of ``text``, in order."""
    spans: list[tuple[int, int]] = []
    previous_wordy = False  # the previous span is letters/digits (marks included)
    for match in _PIECE.finditer(text):
        start, end = match.span()
        char = text[start]
        wordy = end - start > 1 or char.isalnum() or (char >= "\u0300" and _is_mark(char))
        # Python's \w leaves combining marks out ("e" + U+0301, Devanagari vowel signs): they
        # belong to the letters they follow, and letters after them continue the same word.
        if wordy and previous_wordy and spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
        previous_wordy = wordy
    return spans


def token_words(spans: Sequence[tuple[int, int]], offsets: Sequence[Sequence[int]]) -> list[int | None]:
    """The word each sub-token belongs to (by character offsets), None for specials and bare spaces.

    A sub-token belongs to the word its first non-space character is in. SentencePiece pieces that
    start with the space before a word (``▁Paris`` with offsets over the space) therefore belong to
    that word, and a piece that glues punctuation onto a word (``Paris,``) belongs to the word it
    starts in: the comma then has no sub-token of its own.
    """
    starts = [start for start, _ in spans]
    owners: list[int | None] = []
    for start, end in offsets:
        if end <= start:
            owners.append(None)
            continue
        index = bisect_right(starts, start) - 1
        if index >= 0 and start < spans[index][1]:
            owners.append(index)
        elif index + 1 < len(spans) and starts[index + 1] < end:
            owners.append(index + 1)
        else:
            owners.append(None)
    return owners


def first_tokens(spans: Sequence[tuple[int, int]], offsets: Sequence[Sequence[int]]) -> list[int | None]:
    """For each word, the index of its first sub-token: the position trained and decoded for it.

    None for a word that no sub-token starts in (punctuation a tokenizer glued to the previous
    word); the engine lets such a word join an entity only between two words of that entity.
    """
    first: list[int | None] = [None] * len(spans)
    for position, word in enumerate(token_words(spans, offsets)):
        if word is not None and first[word] is None:
            first[word] = position
    return first


def piece_tags(token: str, tag: str) -> list[tuple[int, int, str]]:
    """The words of one annotated token with tags: the first keeps ``B-X``, the rest continue as ``I-X``.

    ``Collomb-Patton`` I-PER gives three I-PER words; ``1.`` O gives two O words.
    """
    spans = split_words(token)
    inside = "I-" + tag[2:] if tag.startswith("B-") else tag
    return [(start, end, tag if i == 0 else inside) for i, (start, end) in enumerate(spans)]
