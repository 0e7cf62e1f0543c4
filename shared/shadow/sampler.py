"""The gateway's shadow sampler: picks live texts for the shadow versions, off the request path.

``offer(texts, served_version)`` is called once a predict batch has answered. It reads a cached
copy of the shadow configuration (no database or broker round trip), draws the sample, and puts it
on a bounded in-memory queue with ``put_nowait``: a full queue drops texts, it never waits. Three
daemon threads do the rest: one re-reads the configuration every ``NER_SHADOW_POLL_S`` (and at
once on a ``ner:shadow`` Redis message), one listens for those messages, one sends the queued
texts to the ``shadow`` Celery queue (routed by name) in tasks of up to ``NER_SHADOW_BATCH_TEXTS``
texts. Nothing it does can change an answer or raise into the caller.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence

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
# The sender waits this long after a first sampled text for others to join it: at most a few
# messages a second, however busy the gateway, so sending costs its event loop next to no CPU (GIL).
LINGER_S = 0.2

Item = tuple[int, int, list[str]]  # (shadow version, the version that answered, texts)
Send = Callable[[int, int, list[str]], None]


def _send_task(settings: Settings) -> Send:
    def send(version: int, active_version: int, texts: list[str]) -> None:
        from shared.core.celery_app import celery_app

        celery_app.send_task(
            COMPARE_TASK,
            args=[version, active_version, texts],
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
                thread = threading.Thread(target=target, name=name, daemon=True)
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
        last_warning = 0.0
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            # Whatever else is waiting, or arrives meanwhile, goes out with it: fewer, fuller tasks.
            self._stop.wait(LINGER_S)
            groups: dict[tuple[int, int], list[str]] = {}
            item: Item | None = first
            while item is not None:
                groups.setdefault((item[0], item[1]), []).extend(item[2])
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            size = self.settings.shadow_batch_texts
            for (version, active_version), texts in groups.items():
                for start in range(0, len(texts), size):
                    batch = texts[start : start + size]
                    try:
                        self._send(version, active_version, batch)
                        self.sent += len(batch)
                    except SEND_ERRORS as exc:
                        self.dropped += len(batch)
                        if time.monotonic() - last_warning > 60:
                            last_warning = time.monotonic()
                            log.warning("shadow texts dropped: the broker is unavailable (%s)", exc)
                    except Exception:
                        self.dropped += len(batch)
                        log.exception("shadow texts dropped")


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
