"""Per-process state of an inference worker: the model (loaded once, after fork) and the supervisor.

The supervisor is a daemon thread that (a) beats the heart of the chunk this process is running,
by touching its ``updated_at``, and (b) runs the watchdog, which re-sends chunks whose heartbeat
stopped (a worker killed mid-chunk) and jobs whose tasks never reached the broker. Every worker
process runs one, so the workers watch each other through the database; whether Redis kept the
killed worker's unacknowledged message does not matter.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
import uuid

from celery import signals
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from shared.core.config import Settings, get_settings
from shared.core.db import reset_engine, session_scope
from shared.core.tables import ChunkStatus, JobChunk
from shared.jobs import maintenance
from shared.jobs.lifecycle import utcnow
from shared.jobs.processing import ChunkTask, ModelUnavailable, Predict
from shared.jobs.service import PinnedModel
from shared.predict.engine import ModelLoadError
from shared.predict.serving import ModelProvider
from shared.registry.errors import VersionNotFound

log = logging.getLogger(__name__)


# How long a chunk keeps its heartbeat after a database error while this process retries it
# (longer than the longest retry countdown, see worker.tasks.DB_BACKOFF_MAX_S).
RETRY_HOLD_S = 90.0


class Supervisor:
    """Heartbeat of the chunks this process owns, and the watchdog, in one daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # (job, chunk) -> (claim token, hold deadline or None while running)
        self._owned: dict[tuple[uuid.UUID, int], tuple[str, float | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Several beats per stall timeout, so one slow database round trip is not a death.
        self.beat_s = max(0.2, min(settings.job_heartbeat_s, settings.job_stall_timeout_s / 4))

    def track(self, job_id: uuid.UUID, index: int, token: str) -> None:
        with self._lock:
            self._owned[(job_id, index)] = (token, None)
        self._beat()

    def release(self, job_id: uuid.UUID, index: int, *, hold: bool = False) -> None:
        with self._lock:
            if not hold:
                self._owned.pop((job_id, index), None)
            elif (job_id, index) in self._owned:
                token, _ = self._owned[(job_id, index)]
                self._owned[(job_id, index)] = (token, time.monotonic() + RETRY_HOLD_S)

    def owned(self) -> frozenset[tuple[uuid.UUID, int]]:
        with self._lock:
            return frozenset(self._owned)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jobs-supervisor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        now = time.monotonic()
        with self._lock:
            for key, (_, until) in list(self._owned.items()):
                if until is not None and now > until:
                    del self._owned[key]  # the retry never came: let the watchdog decide
            owned = list(self._owned.items())
        if not owned:
            return
        try:
            with session_scope() as session:
                for (job_id, index), (token, _) in owned:
                    # Only while the claim is still ours: a chunk taken over is left alone.
                    session.execute(
                        update(JobChunk)
                        .where(
                            JobChunk.job_id == job_id,
                            JobChunk.index == index,
                            JobChunk.status == ChunkStatus.running,
                            JobChunk.claimed_by == token,
                        )
                        .values(updated_at=utcnow())
                    )
        except SQLAlchemyError as exc:  # the database is down: the task's own retry handles it
            log.debug("heartbeat failed: %s", exc)

    def _run(self) -> None:
        next_beat = time.monotonic() + self.beat_s
        next_watch = time.monotonic() + self.settings.job_watchdog_interval_s
        while not self._stop.wait(max(0.05, min(next_beat, next_watch) - time.monotonic())):
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.beat_s
                self._beat()
            if time.monotonic() >= next_watch:
                next_watch = time.monotonic() + self.settings.job_watchdog_interval_s
                try:
                    maintenance.run_watchdog(settings=self.settings, exclude=self.owned())
                except Exception as exc:  # the thread must outlive a database or broker outage
                    log.warning("watchdog pass failed: %s", exc)


class WorkerRuntime:
    """The model provider and supervisor of one worker process."""

    def __init__(self, settings: Settings) -> None:
        fix_mmap_threshold()  # before this process's first forward pass (the solo pool too)
        self.settings = settings
        self.provider = ModelProvider(settings)
        self.supervisor = Supervisor(settings)

    def preload(self) -> None:
        """Load the active model now, so the first chunk does not wait (a failure is not fatal)."""
        try:
            served = self.provider.refresh()
            if served is not None:
                # The first forward pass pays one-off costs (allocations, kernel selection): not a job's.
                served.engine.predict(["Warm-up: Kofi Annan visited Paris."])
                log.info("worker model ready: version %s (%s)", served.version, served.ref)
        except Exception as exc:
            log.warning("no model preloaded (%s); jobs load their pinned model when they run", exc)

    def predictor(self, pinned: PinnedModel) -> Predict:
        """The engine of the job's pinned model: a registry version, or the NER_MODEL it was given."""
        try:
            if pinned.version is not None:
                served = self.provider.get(pinned.version)
            else:
                served = self.provider.get_ref(pinned.ref)
        except VersionNotFound as exc:
            raise ModelUnavailable(
                f"the job's model version {pinned.version} no longer exists: {exc}"
            ) from exc
        except ModelLoadError as exc:
            which = f"version {pinned.version}" if pinned.version is not None else repr(pinned.ref)
            raise ModelUnavailable(f"the job's model ({which}) cannot be loaded: {exc}") from exc
        return served.engine.predict

    def chunk_task(self) -> ChunkTask:
        return ChunkTask(settings=self.settings, load_predictor=self.predictor, heartbeat=self.supervisor)


_runtime: WorkerRuntime | None = None
_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    """This process's runtime, created on first use (the solo pool has no process-init signal)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = WorkerRuntime(get_settings())
            _runtime.supervisor.start()
        return _runtime


# --- memory (issue 21: pool children grew 226 -> 737 MB in a 4-minute soak) ----------------------
# The engine bounds torch's per-shape caches itself (shared.predict.engine.runtime.bound_shape_caches);
# what is left here is glibc's: its mmap threshold and the heap trimmed after each chunk.
# NER_WORKER_MAX_MEMORY_MB replaces a child that still grows.

# glibc raises its mmap threshold each time a large block is freed (up to 32 MB); from then on the
# engine's largest tensors come from the heap, and RSS swings with each chunk (one pool child:
# 588-649 MB over the last 15 minutes of a 30-minute soak). With the threshold fixed they stay mmapped
# and go back to the kernel when freed. Fixing it also fixes the trim threshold at glibc's 128 KB, and
# trimming the heap top after every free cost 15-30% of the engine's speed: it is set to 64 MB (the
# chunk-end malloc_trim still trims all). Measured with one-off scripts: 14 chunks of 1,000 CoNLL
# sentences, default model, bf16, 2 threads: RSS max over min in the last half 6.9-7.8% at 4 MB against
# 9.0-9.8% as glibc does it, at the same speed; a 1 MB threshold gave 5.9-8.5% in 18-19 s against 16 s.
# Not 4 MB but 16 MB (issue 18): at 4 MB a pass's activations of 4-16 MB (32 long sentences) are
# mapped afresh each time, and int8, whose passes take the least time, paid most for the page
# faults: 14 chunks of 1,000 random eng.train sentences ran at 640-642 sentences/s against 714-723 at
# 16 MB (glibc as it is: 700-704), RSS after each chunk as flat at both (2.5% over the last half);
# bf16 the same at both (790-830 sentences/s, flat). A 10,000-document int8 job's pool child had 1.1
# million minor faults at 4 MB, 0.35 million at 16.
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc's own tunable: an operator's value wins
MMAP_THRESHOLD_BYTES = 16 << 20
TRIM_THRESHOLD_BYTES = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def fix_mmap_threshold() -> None:
    """Keep blocks over 16 MB mmapped, returned when freed; a no-op without glibc or when set."""
    if MMAP_THRESHOLD_ENV in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


def trim_heap() -> None:
    """Return freed heap pages to the kernel (glibc keeps them otherwise); a no-op without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@signals.task_postrun.connect
def _after_task(sender: object = None, **_: object) -> None:
    # After every task of this process (a chunk, a shadow comparison): its tensors are freed by now.
    if getattr(sender, "name", "").startswith(("ner.jobs.process_chunk", "ner.shadow.")):
        trim_heap()


def init_process(index: int | None = None) -> None:
    """After fork: fresh database connections, a GPU of its own, the model, the supervisor."""
    from shared.predict.engine.runtime import pick_process_gpu  # torch: in the pool process only

    reset_engine()  # connections inherited from the parent must not be shared
    pick_process_gpu(index)
    runtime().preload()
    # Follow the registry from here on: a newly activated version is fetched from the artifact
    # store and loaded in the background, so the first chunk pinned to it does not wait for that.
    runtime().provider.start()
