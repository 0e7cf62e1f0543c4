"""Overlapping token windows for texts longer than the model's window, and who owns each token."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Window:
    """Tokens ``[start, end)`` of one text, and the part ``[own_start, own_end)`` whose labels it decides."""

    text_index: int
    start: int
    end: int
    own_start: int
    own_end: int


def plan_windows(text_index: int, n_tokens: int, size: int, stride: int) -> list[Window]:
    """Cover ``n_tokens`` with windows of at most ``size`` tokens overlapping by at least ``stride``.

    Each token is owned by exactly one window: in an overlap, the first half belongs to the earlier
    window and the second half to the later one, so every token is labelled with at least
    ``stride // 2`` tokens of context on both sides and an entity at an edge is reported once.
    """
    if n_tokens <= 0:
        return []
    if n_tokens <= size:
        return [Window(text_index, 0, n_tokens, 0, n_tokens)]
    stride = max(0, min(stride, size // 2))
    step = size - stride
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + size, n_tokens)
        spans.append((start, end))
        if end == n_tokens:
            break
        # The last window is pulled back to a full one: more context, and overlap >= stride.
        start = min(start + step, n_tokens - size)
    windows = []
    for i, (start, end) in enumerate(spans):
        own_start = 0 if i == 0 else (start + spans[i - 1][1]) // 2
        own_end = n_tokens if i == len(spans) - 1 else (spans[i + 1][0] + end) // 2
        windows.append(Window(text_index, start, end, own_start, own_end))
    return windows
