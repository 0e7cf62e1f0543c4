"""A cap on each API key's predict requests in flight in this gateway process.

The micro-batcher serves requests in arrival order: a key that keeps many large requests queued
would make everyone else's wait behind them. With at most ``limit`` in flight per key, another
key's request waits for a few of them at most.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock

from shared.keys.errors import RateLimited


class KeyConcurrency:
    """Counts in-flight requests per key; past ``limit`` a request is refused (429), not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[int, int] = {}
        self._lock = Lock()

    @contextmanager
    def slot(self, key_id: int | None) -> Iterator[None]:
        """Hold one of the key's slots for the duration of a request (auth off: no cap)."""
        if key_id is None:
            yield
            return
        with self._lock:
            current = self._in_flight.get(key_id, 0)
            if current >= self.limit:
                raise RateLimited(
                    f"this API key already has {current} predict requests in flight "
                    f"(NER_PREDICT_MAX_CONCURRENT_PER_KEY={self.limit}); retry in 1 s",
                    retry_after_s=1,
                )
            self._in_flight[key_id] = current + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._in_flight[key_id] - 1
                if left:
                    self._in_flight[key_id] = left
                else:
                    del self._in_flight[key_id]
