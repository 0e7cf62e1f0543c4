"""One beat scheduler, whatever is killed: real ``ner worker --beat`` and ``ner beat`` processes.

Who schedules is read from the processes themselves: the Redis lock names its holder's pid, and
each process logs every task it sends ("Sending due task").
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.support.processes import ServiceProcess, ner, wait_until
from worker.beat import LOCK_KEY

pytestmark = pytest.mark.slow

SENT = "Sending due task"
HOLDING = "holding the scheduler lock"
WAITING = "another scheduler holds the lock"


@pytest.fixture
def env(service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    client = redis.Redis.from_url(service_env["NER_REDIS_URL"])
    client.delete(LOCK_KEY)
    # A purge every second, so a scheduler that schedules shows it at once.
    yield {**service_env, "NER_PURGE_INTERVAL_S": "1"}
    client.delete(LOCK_KEY, "inference")  # purge messages nobody consumed
    client.close()


def lock_holder_pid(env: dict[str, str]) -> int | None:
    raw = redis.Redis.from_url(env["NER_REDIS_URL"]).get(LOCK_KEY)
    return int(raw.decode().split("|")[2]) if raw else None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def start(env: dict[str, str], log_dir: Path, *args: str) -> ServiceProcess:
    return ServiceProcess(args[0], ner(*args), env, log_dir)


def test_killing_the_beat_workers_main_process_leaves_no_scheduler_and_a_new_one_takes_over(
    env: dict[str, str], log_dir: Path
) -> None:
    worker = start(env, log_dir, "worker", "--beat")
    beat: ServiceProcess | None = None
    try:
        wait_until(lambda: HOLDING in worker.log() and SENT in worker.log(), 120, "the embedded beat", worker)
        embedded = lock_holder_pid(env)
        children = {child.pid for child in psutil.Process(worker.pid).children(recursive=True)}
        assert embedded in children  # the scheduler is the worker's embedded beat process

        os.kill(worker.pid, signal.SIGKILL)  # the main process only, as an OOM killer would
        worker.process.wait(timeout=10)
        # Pool children and the embedded beat die with it; before, the beat lived on, orphaned.
        wait_until(lambda: all(gone(pid) for pid in children), 15, "the worker's children to die")

        beat = start(env, log_dir, "beat")
        wait_until(lambda: HOLDING in beat.log(), 60, "the new beat to take the lock", beat)
        assert lock_holder_pid(env) == beat.pid  # the new scheduler is the one holding the lock
        wait_until(lambda: SENT in beat.log(), 30, "the new beat to schedule", beat)
        assert all(gone(pid) for pid in children)
    finally:
        worker.stop()
        if beat is not None:
            beat.stop()


def test_a_second_beat_waits_without_scheduling_then_takes_over(env: dict[str, str], log_dir: Path) -> None:
    first = start(env, log_dir, "beat")
    second: ServiceProcess | None = None
    try:
        wait_until(lambda: SENT in first.log(), 60, "the first beat to schedule", first)
        second = start(env, log_dir, "beat")
        wait_until(lambda: WAITING in second.log(), 60, "the second beat to wait", second)
        sent_before = first.log().count(SENT)
        time.sleep(4)
        assert first.log().count(SENT) > sent_before  # the first one goes on scheduling ...
        assert SENT not in second.log() and HOLDING not in second.log()  # ... the second one does not
        assert lock_holder_pid(env) == first.pid

        first.stop()  # a clean stop releases the lock: the waiting one takes over within a tick
        wait_until(lambda: SENT in second.log(), 30, "the second beat to take over", second)
        assert lock_holder_pid(env) == second.pid
    finally:
        first.stop()
        if second is not None:
            second.stop()
