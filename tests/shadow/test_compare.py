"""The comparison rules on their own: shadow agreement, sample excerpts, and the per-document diff."""

from __future__ import annotations

from typing import Any

from shared.jobs.diff import count_changes, diff_entities
from shared.shadow.compare import agreement, excerpt

TEXT = "Kofi Annan met Angela Merkel in Berlin and Paris."


def ent(word: str, group: str, text: str = TEXT, score: float = 0.9) -> dict[str, Any]:
    start = text.index(word)
    return {"word": word, "entity_group": group, "score": score, "start": start, "end": start + len(word)}


def test_agreement_counts_matches_additions_and_removals_by_type() -> None:
    active = [ent("Kofi Annan", "PER"), ent("Angela Merkel", "PER"), ent("Berlin", "LOC")]
    shadow = [ent("Kofi Annan", "ORG"), ent("Angela Merkel", "PER", score=0.5), ent("Paris", "LOC")]
    result = agreement(active, shadow)
    assert result.disagrees
    assert dict(result.matched) == {"PER": 1}  # the score does not matter, the span and type do
    assert dict(result.added) == {"ORG": 1, "LOC": 1}
    assert dict(result.removed) == {"PER": 1, "LOC": 1}
    assert result.first_difference == 0
    same = agreement(active, list(reversed(active)))
    assert not same.disagrees and sum(same.matched.values()) == 3


def test_excerpt_keeps_a_window_around_the_first_difference_with_relative_offsets() -> None:
    long_text = "x" * 1000 + " " + TEXT + " " + "y" * 1000
    active = [ent("Berlin", "LOC", long_text), ent("Kofi Annan", "PER", long_text)]
    shadow = [ent("Berlin", "LOC", long_text)]
    first = agreement(active, shadow).first_difference
    assert first == long_text.index("Kofi")
    kept = excerpt(long_text, active, shadow, first_difference=first, max_chars=100, store_text=True)
    assert kept["text_chars"] == len(long_text) and len(kept["excerpt"]) == 100
    assert kept["excerpt_start"] <= first < kept["excerpt_start"] + 100
    for entity in kept["active_entities"] + kept["shadow_entities"]:
        assert kept["excerpt"][entity["start"] : entity["end"]] == entity["word"]
    assert {e["word"] for e in kept["active_entities"]} == {"Kofi Annan", "Berlin"}
    hidden = excerpt(long_text, active, shadow, first_difference=first, max_chars=100, store_text=False)
    assert hidden["excerpt"] is None
    assert all(e["word"] is None for e in hidden["active_entities"] + hidden["shadow_entities"])
    assert [e["start"] for e in hidden["active_entities"]] == [e["start"] for e in kept["active_entities"]]


def test_diff_sorts_changes_into_added_removed_retyped_and_boundary() -> None:
    before = [
        ent("Kofi Annan", "PER"),
        ent("Angela Merkel", "PER"),
        ent("Berlin", "LOC"),
        ent("Paris", "LOC"),
    ]
    after = [ent("Kofi Annan", "PER"), ent("Angela", "PER"), ent("Berlin", "ORG"), ent("met", "MISC")]
    changes = diff_entities(before, after)
    assert [e["word"] for e in changes["added"]] == ["met"]
    assert [e["word"] for e in changes["removed"]] == ["Paris"]
    assert [(c["before"]["entity_group"], c["after"]["entity_group"]) for c in changes["retyped"]] == [
        ("LOC", "ORG")
    ]
    assert [(c["before"]["word"], c["after"]["word"]) for c in changes["boundary"]] == [
        ("Angela Merkel", "Angela")
    ]
    counts: dict[str, dict[str, int]] = {}
    count_changes(changes, counts)
    assert counts == {
        "MISC": {"added": 1, "removed": 0, "retyped": 0, "boundary": 0},
        "LOC": {"added": 0, "removed": 1, "retyped": 1, "boundary": 0},
        "PER": {"added": 0, "removed": 0, "retyped": 0, "boundary": 1},
    }
    assert not any(diff_entities(before, list(reversed(before))).values())
