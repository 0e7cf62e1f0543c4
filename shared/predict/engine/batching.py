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


def split_for_lanes(groups: list[list[int]], lengths: Sequence[int], lanes: int) -> list[list[int]]:
    """``groups`` (of indices into ``lengths``), the one with the most tokens cut in two where its
    tokens are halved, until they are a multiple of ``lanes`` and none holds half again a lane's share
    of the tokens, or none can be cut: a micro-batch that makes one pass makes one a lane, each with
    as many tokens; five passes of documents on two lanes make six, so no lane waits idle for the
    last one; and 31 short sentences are not one lane's pass while the other lane runs one long one."""
    groups = [list(group) for group in groups]
    if not groups:
        return groups

    def tokens(group: list[int]) -> int:
        return sum(lengths[index] for index in group)

    # Half again a lane's share: a pass cut in two at its middle is never exactly halved.
    most = 1.5 * sum(tokens(group) for group in groups) / lanes
    while True:
        largest = max(groups, key=tokens)
        if (len(groups) % lanes == 0 and tokens(largest) <= most) or len(largest) < 2:
            break
        half, running, cut = tokens(largest) / 2, 0, 1
        for position, index in enumerate(largest[:-1], start=1):
            if abs(running + lengths[index] - half) > abs(running - half) and position > 1:
                break
            running, cut = running + lengths[index], position
        at = groups.index(largest)
        groups[at : at + 1] = [largest[:cut], largest[cut:]]
    return groups


# Batch widths are rounded up to one of a bounded set. Every distinct input shape costs a forward pass
# its own oneDNN primitive and scratch memory (and CUDA its own kernel choice), so exact widths made
# a long-running worker's memory grow with each new width it met (up to ~250 of them). Multiples of
# 8 up to 64, then steps of an eighth of the next power of two (16 up to 128, 32 up to 256): 16
# widths for 256-token windows, and less than 8 tokens or a quarter of the batch's longest window
# of padding on top (a flat multiple of 16 padded a 20-token sentence to 32: 22% fewer sentences/s
# against exact widths, 10% fewer with these; documents the same: docs/benchmarks.md).
# The padding is masked out: the entities do not change.
WIDTH_BUCKET = 8


def bucket_width(width: int, bucket: int, limit: int) -> int:
    """``width`` rounded up to its bucket (steps of ``bucket``, or 1/8 of the power of two above
    ``width`` when larger), never past ``limit``; ``bucket`` 1: unchanged."""
    if bucket <= 1:
        return width
    step = max(bucket, (1 << max(0, width - 1).bit_length()) // 8)
    return max(width, min(limit, -(-width // step) * step))
