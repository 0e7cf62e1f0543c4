"""Exactly one beat scheduler per deployment: a Redis lock with expiry, and no orphans.

``ner beat`` and ``ner worker --beat`` both run :class:`SingleScheduler`. It schedules only while it
holds the lock ``ner:beat:lock`` (refreshed every tick, expiring ``LOCK_TTL_S`` after its holder
stops), so a second scheduler started by mistake waits without scheduling and takes over when the
first one is gone. It opens the schedule file only once it holds the lock: two schedulers never
share it.

The embedded beat of ``ner worker --beat`` is a child of the worker's main process that Celery does
not tie to it: killed with SIGKILL, the main process left it running. It now asks the kernel to
kill it when its parent dies (``PR_SET_PDEATHSIG``) and checks its parent on every tick.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import uuid
from typing import Any

import redis
from billiard.process import current_process
from billiard.util import set_pdeathsig
from celery.beat import PersistentScheduler

from shared.core.config import get_settings
from shared.core.redis import redis_client

log = logging.getLogger(__name__)

LOCK_KEY = "ner:beat:lock"
LOCK_TTL_S = 30.0  # a scheduler that stopped without releasing the lock (host lost) frees it this fast
TICK_MAX_S = 5.0  # the lock is refreshed at least this often
EMBEDDED_PROCESS_NAME = "Beat"  # celery.beat.EmbeddedService's process

# Refresh only our own lock; take over a holder's lock only if it still is that holder's.
_REFRESH = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_TAKE_OVER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return false"
)


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class SchedulerLock:
    """``LOCK_KEY`` naming its holder as ``host|pid namespace|pid|random``."""

    def __init__(self, client: redis.Redis, ttl_s: float = LOCK_TTL_S) -> None:
        self.client = client
        self.ttl_ms = int(ttl_s * 1000)
        self.host, self.pidns = socket.gethostname(), _pid_namespace()
        self.value = f"{self.host}|{self.pidns}|{os.getpid()}|{uuid.uuid4().hex}"

    def hold(self) -> bool:
        """Take the lock, or keep it; False while another live scheduler holds it (or Redis is down)."""
        try:
            if self.client.eval(_REFRESH, 1, LOCK_KEY, self.value, self.ttl_ms):
                return True
            if self.client.set(LOCK_KEY, self.value, nx=True, px=self.ttl_ms):
                return True
            holder = self.client.get(LOCK_KEY)
            if holder is not None and self._holder_is_dead(holder.decode(errors="replace")):
                # Killed on this machine without releasing it: no need to wait for the expiry.
                return bool(self.client.eval(_TAKE_OVER, 1, LOCK_KEY, holder, self.value, self.ttl_ms))
        except redis.RedisError as exc:
            log.warning("beat: cannot reach Redis for the scheduler lock (%s); not scheduling", exc)
        return False

    def _holder_is_dead(self, holder: str) -> bool:
        parts = holder.split("|")
        if len(parts) != 4 or (parts[0], parts[1]) != (self.host, self.pidns) or not parts[2].isdigit():
            return False  # another machine or container: only the expiry tells
        return not _pid_alive(int(parts[2]))

    def holder(self) -> str | None:
        """Who holds the lock, for the log."""
        try:
            raw = self.client.get(LOCK_KEY)
        except redis.RedisError:
            return None
        return raw.decode(errors="replace") if raw is not None else None

    def release(self) -> None:
        with contextlib.suppress(redis.RedisError):  # else it expires by itself
            self.client.eval(_RELEASE, 1, LOCK_KEY, self.value)


class SingleScheduler(PersistentScheduler):
    """Celery's file-backed scheduler, active only while it holds the deployment's lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        process = current_process()
        self._embedded = process.name == EMBEDDED_PROCESS_NAME
        # The worker that forked the embedded beat (billiard records it), else whoever started us.
        self._parent = getattr(process, "_parent_pid", None) or os.getppid()
        if self._embedded:
            _die_with_parent(self._parent)
        self._lock = SchedulerLock(redis_client(get_settings().redis_url))
        self._ready = False  # the schedule file is opened once the lock is ours
        self._waiting_logged = False
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        """Deferred to the first tick that holds the lock."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self._embedded and os.getppid() != self._parent:
            log.error("beat: the worker that started this scheduler is gone; exiting")
            raise SystemExit(1)
        if not self._lock.hold():
            if self._ready:
                log.error("beat: lost the scheduler lock to %s; not scheduling", self._lock.holder())
            elif not self._waiting_logged:
                log.warning(
                    "beat: another scheduler holds the lock (%s); waiting, not scheduling",
                    self._lock.holder(),
                )
                self._waiting_logged = True
            return TICK_MAX_S
        if not self._ready:
            super().setup_schedule()
            self._ready = True
            log.info("beat: holding the scheduler lock %s as %s; scheduling", LOCK_KEY, self._lock.value)
        return min(super().tick(*args, **kwargs), TICK_MAX_S)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._lock.release()


def _die_with_parent(parent: int) -> None:
    """The kernel kills this process when the worker that forked it dies, however it dies."""
    try:
        set_pdeathsig(signal.SIGKILL)
    except OSError:  # not Linux: the per-tick parent check still stops it
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
