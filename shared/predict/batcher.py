"""Micro-batching: concurrent predict requests gathered into one model call, run off the event loop.

Like BentoML's adaptive batching or Ray Serve's ``@serve.batch``: the first waiting request opens
a batch, which closes when it holds ``max_batch_size`` texts, ``max_wait_ms`` has passed, or as
many requests as the last batch answered are back (the wait applies once concurrent traffic shows,
see ``_gather``). One batch runs at a time in a worker
thread (the model already uses every core), and requests that arrive meanwhile form the next
batch, so under load batches grow and throughput with them.

Requests carry a ``key`` (the model version that answers them) and merge only with requests of
the same key: a request pinned to another version runs in a batch of its own, with its own
predict function, and never holds up or mixes into the active version's batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Meta = TypeVar("Meta")
Result = TypeVar("Result")

# predict(texts) -> (meta shared by the batch, one result per text)
PredictFn = Callable[[list[str]], tuple[Meta, list[Result]]]


@dataclass
class _Item(Generic[Meta, Result]):
    texts: Sequence[str]
    future: asyncio.Future[tuple[Meta, list[Result]]]
    key: Hashable = None  # items merge only with items of the same key
    predict: PredictFn | None = None  # None: the batcher's own


@dataclass
class BatchStats:
    """What the batcher did; ``max_batch_texts`` > 1 shows that requests were merged."""

    batches: int = 0
    texts: int = 0
    max_batch_texts: int = 0
    max_batch_requests: int = 0
    sizes: list[int] = field(default_factory=list)  # texts per model call, the last 1000

    def record(self, texts: int, requests: int) -> None:
        self.batches += 1
        self.texts += texts
        self.max_batch_texts = max(self.max_batch_texts, texts)
        self.max_batch_requests = max(self.max_batch_requests, requests)
        self.sizes.append(texts)
        del self.sizes[:-1000]


class MicroBatcher(Generic[Meta, Result]):
    """Gathers ``submit`` calls into batches for ``predict``; start it inside the running loop."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item[Meta, Result]] = asyncio.Queue()
        # Items taken from the queue but left for a later batch (another key, or too big to fit),
        # in arrival order: they open the next batches before anything still queued.
        self._held: deque[_Item[Meta, Result]] = deque()
        self._inflight: list[_Item[Meta, Result]] = []
        self._last_batch_requests = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._task: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop taking batches; callers still waiting get an error instead of hanging."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        waiting = [*self._inflight, *self._held]
        self._held.clear()
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, texts: Sequence[str], *, key: Hashable = None, predict: PredictFn | None = None
    ) -> tuple[Meta, list[Result]]:
        """Predict ``texts`` as part of the next batch of ``key``; raises whatever ``predict`` raised.

        ``predict`` (default: the batcher's own) answers the batch; every request of one key must
        pass an equivalent one, since a batch runs with its first request's.
        """
        if self._task is None or self._task.done():
            raise RuntimeError("the micro-batcher is not running")
        future: asyncio.Future[tuple[Meta, list[Result]]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(texts, future, key, predict))
        return await future

    async def _next_item(self) -> _Item[Meta, Result]:
        if self._held:
            return self._held.popleft()
        return await self._queue.get()

    def _take_held(self, key: Hashable, room: int) -> list[_Item[Meta, Result]]:
        """Held items of ``key`` that fit in ``room`` texts, in order (the first that does not fit
        stops the taking, so a key's requests keep their order); the others stay held."""
        taken: list[_Item[Meta, Result]] = []
        kept: deque[_Item[Meta, Result]] = deque()
        full = False
        for item in self._held:
            if not full and item.key == key:
                if len(item.texts) <= room:
                    taken.append(item)
                    room -= len(item.texts)
                    continue
                full = True
            kept.append(item)
        self._held = kept
        return taken

    async def _gather(self) -> list[_Item[Meta, Result]]:
        """One batch: wait for a first request, then for more of its key until full, ``max_wait``
        passed, or as many requests as the last batch had are in; then add what is already queued.

        The wait only pays off under concurrent traffic: after a batch of a single request, the
        next one takes just what is already queued, so a lone caller never waits for company.
        Under load, requests queue up while the model runs and batches form on their own. Callers
        answered together come back together: once as many are back as the last batch answered,
        waiting out ``max_wait`` only idles the model (32 clients: 13.5 ms between model calls of
        31-78 ms, 8.5 ms without that tail; docs/benchmarks.md#predict). Taking whatever is queued
        on top lets batches grow again when callers join.
        """
        first = await self._next_item()
        items = [first, *self._take_held(first.key, self.max_batch_size - len(first.texts))]
        count = sum(len(item.texts) for item in items)
        expected = self._last_batch_requests
        wait = self.max_wait_s if expected > 1 else 0.0
        deadline = asyncio.get_running_loop().time() + wait
        while count < self.max_batch_size:
            timeout = deadline - asyncio.get_running_loop().time() if len(items) < expected else 0.0
            try:
                if timeout > 0:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                else:
                    item = self._queue.get_nowait()  # deadline passed or callers back: what is there
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if item.key != first.key:
                self._held.append(item)  # another version's: it opens a later batch
                continue
            if count + len(item.texts) > self.max_batch_size:
                self._held.append(item)  # opens a later batch, so a large request is never split
                break
            items.append(item)
            count += len(item.texts)
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            items = [item for item in items if not item.future.done()]  # callers that gave up
            if not items:
                continue
            texts = [text for item in items for text in item.texts]
            self.stats.record(len(texts), len(items))
            self._last_batch_requests = len(items)
            if self._on_batch is not None:
                self._on_batch(len(texts))
            self._inflight = items  # kept if stop() cancels us mid-call: it fails them
            try:
                predict = items[0].predict or self._predict
                meta, results = await loop.run_in_executor(self._executor, predict, texts)
            except Exception as exc:  # every waiting caller gets the error, the batcher goes on
                self._inflight = []
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self._inflight = []
            position = 0
            for item in items:
                part = results[position : position + len(item.texts)]
                position += len(item.texts)
                if not item.future.done():
                    item.future.set_result((meta, part))
