"""Forward passes side by side: one predict call's passes run in lanes, each on its share of the cores.

One pass at a time on every core (torch's intra-op threads) makes the cores meet at each of a pass's
~100 parallel regions; with the default OMP_WAIT_POLICY=PASSIVE (a worker may share the cores) each
meeting wakes a sleeping thread, and on a 2-core KVM guest that left the second core worth 1.2x at
32 sentences a pass. Two passes at once, one thread each, ran 268-282 sentences/s against 180-205 for
one pass at a time on both (docs/benchmarks.md#predict): the cores never wait for each other. torch
releases the GIL inside its operators, so the lanes are threads of this process sharing one model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool, _pool_size
    _pool, _pool_size = None, 0  # a forked child (a Celery pool process) has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool)


def _lane_pool(size: int) -> ThreadPoolExecutor:
    """The process's lane threads (every engine shares the cores, so they share these), ``size`` at least."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            if _pool is not None:
                _pool.shutdown(wait=False)  # its running lanes finish; new ones go to the larger pool
            _pool, _pool_size = ThreadPoolExecutor(max_workers=size, thread_name_prefix="ner-lane"), size
        return _pool


def run_in_lanes(run: Callable[[Item], Result], items: Sequence[Item], lanes: int) -> list[Result]:
    """``run`` over ``items`` with at most ``lanes`` running at once (the caller is one lane), results in
    order; each lane takes the next item when it is done, so uneven passes even out. The first error
    raised is raised here, once every lane has stopped."""
    if lanes <= 1 or len(items) <= 1:
        return [run(item) for item in items]
    results: list[Result | None] = [None] * len(items)
    order = iter(range(len(items)))
    order_lock = threading.Lock()

    def lane() -> None:
        while True:
            with order_lock:
                index = next(order, None)
            if index is None:
                return
            try:
                results[index] = run(items[index])
            except BaseException:
                with order_lock:
                    for _ in order:  # the other lanes stop after their current item
                        pass
                raise

    helpers = min(lanes, len(items)) - 1
    futures: list[Future[None]] = [_lane_pool(helpers).submit(lane) for _ in range(helpers)]
    error: BaseException | None = None
    try:
        lane()
    except BaseException as exc:  # re-raised below, once the other lanes have stopped
        error = exc
    for future in futures:
        try:
            future.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
    return results  # type: ignore[return-value]  # every index was filled, or an error was raised
