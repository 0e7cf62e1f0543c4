"""The gateway's shadow sampler: picks live texts for the shadow versions, off the request path.

``offer(texts, served_version)`` is called once a predict batch has answered. It reads a cached
copy of the shadow configuration (no database or broker round trip), draws the sample, and puts it
on a bounded in-memory queue with ``put_nowait``: a full queue drops texts, it never waits. Three
daemon threads do the rest: one re-reads the configuration every ``NER_SHADOW_POLL_S`` (and at
once on a ``ner:shadow`` Redis message), one listens for those messages, one sends the queued
texts to the ``shadow`` Celery queue (routed by name) in tasks of up to ``NER_SHADOW_BATCH_TEXTS``
texts. Nothing it does can change an answer or raise into the caller.

The sender shares the GIL with the event loop, so it is built to wake and publish rarely: it wakes
every ``TICK_S``, publishes full tasks only, and a partial one once its oldest text waited
``MAX_WAIT_S``; it publishes through an app of its own that sends no ``task-sent`` event (that
event was half the cost of a publish, measured) and names its arguments in ``argsrepr`` rather than
having Celery ``repr`` every live text (which also keeps live texts out of Flower).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.core.config import Settings, get_settings
from shared.core.redis import wake_on_messages
from shared.shadow import service

log = logging.getLogger(__name__)

COMPARE_TASK = "ner.shadow.compare"
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
SEND_ERRORS = (kombu.exceptions.KombuError, redis.RedisError, OSError)
# The sender wakes at most this often, however busy the gateway: a few wake-ups a second, each
# taking the GIL once for everything queued meanwhile, cost the event loop next to nothing.
TICK_S = 0.25
# A partial task (fewer than NER_SHADOW_BATCH_TEXTS texts) waits at most this long for more texts;
# full tasks go out at the next tick. Busy gateways publish ceil(texts / batch) tasks, quiet ones
# still deliver within about a second.
MAX_WAIT_S = 1.0

Item = tuple[int, int, list[str]]  # (shadow version, the version that answered, texts)
Send = Callable[[int, int, list[str]], None]


def _publisher(settings: Settings) -> Any:
    """A Celery app for publishing shadow tasks only: the one app's broker, queues and routes,
    without the ``task-sent`` event (Flower still sees each task from its receipt by a worker)."""
    from celery import Celery

    from shared.core.celery_app import configure

    app = Celery("ner-shadow", set_as_current=False)
    configure(app, settings)
    app.conf.task_send_sent_event = False
    return app


def _send_task(settings: Settings) -> Send:
    app: Any = None

    def send(version: int, active_version: int, texts: list[str]) -> None:
        nonlocal app
        if app is None:  # on the sender thread, at its first publish: nothing at import or start
            app = _publisher(settings)
        app.send_task(
            COMPARE_TASK,
            args=[version, active_version, texts],
            # Celery would repr() every live text for the message headers and Flower.
            argsrepr=f"({version}, {active_version}, <{len(texts)} texts>)",
            kwargsrepr="{}",
            time_limit=settings.shadow_task_time_limit_s,
            soft_time_limit=max(1, settings.shadow_task_time_limit_s - 10),
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )

    return send


class ShadowSampler:
    """Sampling and sending for one process. Thread-safe; starts its threads on first use."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: Callable[[], Session] | None = None,
        send: Send | None = None,
    ) -> None:
        self.settings = settings
        self._session_factory = session_factory
        self._send = send or _send_task(settings)
        self._rates: dict[int, float] = {}  # replaced whole, never mutated: readers need no lock
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=settings.shadow_queue_max)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.loaded = threading.Event()  # set once the configuration was read
        self.offered = self.queued = self.dropped = self.sent = 0
        self.published = 0  # tasks published (each up to NER_SHADOW_BATCH_TEXTS texts)
        self.send_cpu_s = 0.0  # CPU seconds the sender thread spent draining and publishing
        self._last_warning = 0.0

    # --- request path --------------------------------------------------------------------------

    def offer(self, texts: Sequence[str], served_version: int | None) -> None:
        """Sample ``texts`` (answered by ``served_version``) per shadow version; never blocks or raises."""
        try:
            if not self._threads:
                self.start()
            rates = self._rates
            if not rates or served_version is None:
                return
            self.offered += len(texts)
            for version, rate in rates.items():
                if version == served_version:
                    continue
                picked = list(texts) if rate >= 1.0 else [t for t in texts if random.random() < rate]
                if not picked:
                    continue
                try:
                    self._queue.put_nowait((version, served_version, picked))
                    self.queued += len(picked)
                except queue.Full:
                    self.dropped += len(picked)
        except Exception:  # the caller's answer is already made: sampling must not spoil it
            log.exception("shadow sampling failed")

    # --- background ----------------------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._threads:
                return
            for name, target in (
                ("shadow-config", self._watch),
                ("shadow-listen", self._listen),
                ("shadow-send", self._send_loop),
            ):
                thread = threading.Thread(target=_named(name, target), name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def refresh(self) -> None:
        """Re-read the shadow configuration from the database."""
        with self._session() as session:
            self._rates = service.shadow_rates(session=session)
        self.loaded.set()

    def _session(self) -> Session:
        if self._session_factory is None:
            from shared.core.db import get_sessionmaker

            return get_sessionmaker()()
        return self._session_factory()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except SQLAlchemyError as exc:  # keep the last known configuration
                log.warning("shadow configuration unreadable: %s", exc.__class__.__name__)
            except Exception:
                log.exception("shadow configuration refresh failed")
            self._wake.wait(self.settings.shadow_poll_s)
            self._wake.clear()

    def _listen(self) -> None:
        wake_on_messages(self.settings.redis_url, service.SHADOW_CHANNEL, wake=self._wake, stop=self._stop)

    def _send_loop(self) -> None:
        pending: dict[tuple[int, int], list[str]] = {}  # per (version, active version), in order
        since: dict[tuple[int, int], float] = {}  # when each group's oldest pending text was taken
        while not self._stop.is_set():
            if not pending:
                try:
                    first = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                self._take(first, pending, since)
            # Whatever arrives meanwhile goes out with it: one wake-up a tick, fewer, fuller tasks.
            self._stop.wait(TICK_S)
            started = time.thread_time()
            while True:
                try:
                    self._take(self._queue.get_nowait(), pending, since)
                except queue.Empty:
                    break
            self._flush(pending, since, everything=self._stop.is_set())
            self.send_cpu_s += time.thread_time() - started

    @staticmethod
    def _take(
        item: Item, pending: dict[tuple[int, int], list[str]], since: dict[tuple[int, int], float]
    ) -> None:
        key = (item[0], item[1])
        if key not in pending:
            pending[key] = []
            since[key] = time.monotonic()
        pending[key].extend(item[2])

    def _flush(
        self,
        pending: dict[tuple[int, int], list[str]],
        since: dict[tuple[int, int], float],
        *,
        everything: bool,
    ) -> None:
        """Publish the full tasks of every group, and its partial one when it waited long enough."""
        size = self.settings.shadow_batch_texts
        now = time.monotonic()
        for key, texts in list(pending.items()):
            ready = (
                len(texts) if everything or now - since[key] >= MAX_WAIT_S else len(texts) - len(texts) % size
            )
            for start in range(0, ready, size):
                self._publish(*key, texts[start : min(start + size, ready)])
            if ready < len(texts):
                pending[key] = texts[ready:]
                if ready:
                    since[key] = now  # the rest waits again, at most MAX_WAIT_S
            else:
                del pending[key], since[key]

    def _publish(self, version: int, active_version: int, batch: list[str]) -> None:
        try:
            self._send(version, active_version, batch)
            self.sent += len(batch)
            self.published += 1
        except SEND_ERRORS as exc:
            self.dropped += len(batch)
            if time.monotonic() - self._last_warning > 60:
                self._last_warning = time.monotonic()
                log.warning("shadow texts dropped: the broker is unavailable (%s)", exc)
        except Exception:
            self.dropped += len(batch)
            log.exception("shadow texts dropped")


def _named(name: str, target: Callable[[], None]) -> Callable[[], None]:
    """``target``, run under ``name`` as the OS thread's name too (Linux: ``top -H``, py-spy and
    the shadow benchmark, which reads the sender thread's CPU time from /proc, see it)."""

    def run() -> None:
        with contextlib.suppress(OSError):  # not Linux, or no /proc: only the name is lost
            Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])
        target()

    return run


_sampler: ShadowSampler | None = None
_sampler_lock = threading.Lock()


def sampler() -> ShadowSampler:
    """This process's sampler, created on first use (after any fork)."""
    global _sampler
    if _sampler is None:
        with _sampler_lock:
            if _sampler is None:
                _sampler = ShadowSampler(get_settings())
    return _sampler


def offer(texts: Sequence[str], served_version: int | None) -> None:
    """The one call on the predict path: hand ``texts`` to this process's sampler; never blocks or raises."""
    try:
        sampler().offer(texts, served_version)
    except Exception:
        log.exception("shadow sampling failed")
