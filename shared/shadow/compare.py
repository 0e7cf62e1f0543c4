"""Entity-level agreement of two answers to one text, and the excerpt a disagreement is kept as.

Two entities agree when they have the same start, end and type (the CoNLL entity-level rule the
gate scores with); the active version's answer is the reference, the shadow's the prediction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

EntityDict = dict[str, Any]


def _key(entity: EntityDict) -> tuple[int, int, str]:
    return int(entity["start"]), int(entity["end"]), str(entity["entity_group"])


@dataclass
class Agreement:
    """How one shadow answer compares with the active answer to the same text."""

    matched: Counter[str] = field(default_factory=Counter)  # by type
    added: Counter[str] = field(default_factory=Counter)  # shadow-only entities, by type
    removed: Counter[str] = field(default_factory=Counter)  # active-only entities, by type
    first_difference: int | None = None  # the smallest start of an entity only one answer has

    @property
    def disagrees(self) -> bool:
        return bool(self.added or self.removed)


def agreement(active: list[EntityDict], shadow: list[EntityDict]) -> Agreement:
    """Match the two answers' entities by (start, end, type), as multisets."""
    active_keys = Counter(_key(e) for e in active)
    shadow_keys = Counter(_key(e) for e in shadow)
    result = Agreement()
    for key, count in (active_keys & shadow_keys).items():
        result.matched[key[2]] += count
    starts: list[int] = []
    for key, count in (shadow_keys - active_keys).items():
        result.added[key[2]] += count
        starts.append(key[0])
    for key, count in (active_keys - shadow_keys).items():
        result.removed[key[2]] += count
        starts.append(key[0])
    result.first_difference = min(starts) if starts else None
    return result


def excerpt(
    text: str,
    active: list[EntityDict],
    shadow: list[EntityDict],
    *,
    first_difference: int,
    max_chars: int,
    store_text: bool,
) -> dict[str, Any]:
    """The window of ``text`` kept for a disagreement: at most ``max_chars`` around the first difference.

    Entities wholly inside the window are kept with offsets relative to it; without ``store_text``
    the excerpt and every entity's ``word`` are dropped (offsets, types and scores stay).
    """
    if len(text) <= max_chars:
        start = 0
    else:
        # A quarter of the window before the first difference: the context that leads into it.
        start = max(0, min(first_difference - max_chars // 4, len(text) - max_chars))
    end = min(len(text), start + max_chars)

    def inside(entities: list[EntityDict]) -> list[EntityDict]:
        kept = []
        for e in entities:
            if start <= e["start"] and e["end"] <= end:
                kept.append(
                    {
                        "entity_group": e["entity_group"],
                        "start": e["start"] - start,
                        "end": e["end"] - start,
                        "score": round(float(e["score"]), 6),
                        "word": e["word"] if store_text else None,
                    }
                )
        return kept

    return {
        "text_chars": len(text),
        "excerpt": text[start:end] if store_text else None,
        "excerpt_start": start,
        "active_entities": inside(active),
        "shadow_entities": inside(shadow),
    }
