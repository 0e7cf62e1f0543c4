"""Grouping windows into forward passes: similar lengths together, so padding wastes little."""

from __future__ import annotations

from collections.abc import Sequence


def group_by_length(lengths: Sequence[int], max_batch: int, max_padding: float = 0.25) -> list[list[int]]:
    """Indices of ``lengths`` in forward-pass groups, shortest first.

    A group holds at most ``max_batch`` items, and a longer item starts a new group when padding the
    group to its length would make more than ``max_padding`` of the group's tokens padding. A
    micro-batch of chat-length texts with one long paragraph then costs two small passes instead
    of padding every text to the paragraph's length (7x the work for CoNLL's longest sentences).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real_tokens = 0
    for index in order:
        length = lengths[index]
        padded = (len(current) + 1) * length
        if current and (len(current) >= max_batch or padded - (real_tokens + length) > max_padding * padded):
            groups.append(current)
            current, real_tokens = [], 0
        current.append(index)
        real_tokens += length
    if current:
        groups.append(current)
    return groups
