"""The gateway's shadow sampler in-process: per-version rates from the database, full tasks first,
a bounded queue that drops and counts, and a publish without a task-sent event or live texts in
its headers. The real Postgres and Redis of the test session; the model versions are rows only.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.core.config import get_settings
from shared.core.db import get_sessionmaker
from shared.registry import service as registry
from shared.shadow import sampler as shadow_sampler
from shared.shadow import service as shadow
from tests.support.auth import settings_env
from tests.support.processes import wait_until
from tests.support.registry import registry_restored

BATCH = 4
QUEUE_MAX = 3
Sent = list[tuple[int, int, list[str]]]


@pytest.fixture(scope="module")
def versions(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three registered versions (rows; nothing loads them): the first answers, the others shadow it."""
    folder = Path(tmp_path_factory.mktemp("sampler-models"))
    url = service_env["NER_REDIS_URL"]
    with registry_restored(url):
        with get_sessionmaker()() as session:
            numbers = []
            for _ in range(3):
                number = registry.next_version_number(session=session)
                registry.register_version(
                    session=session, version=number, path=str(folder / str(number)), base_model="",
                    data_hash="", data_ref={}, params={}, metrics={}, labels=[], val_f1=None, test_f1=None,
                )  # fmt: skip
                session.commit()
                numbers.append(number)
            shadow.set_shadow(session=session, version=numbers[1], sample_rate=1.0, redis_url=url)
            shadow.set_shadow(session=session, version=numbers[2], sample_rate=0.5, redis_url=url)
        try:
            yield numbers
        finally:
            with get_sessionmaker()() as session:
                for number in numbers[1:]:
                    shadow.stop_shadow(session=session, version=number, redis_url=url)


def _sampler(send: shadow_sampler.Send) -> shadow_sampler.ShadowSampler:
    values = {"NER_SHADOW_BATCH_TEXTS": str(BATCH), "NER_SHADOW_QUEUE_MAX": str(QUEUE_MAX)}
    with settings_env(values):
        sampler = shadow_sampler.ShadowSampler(get_settings(), send=send)
    sampler.start()
    assert sampler.loaded.wait(30), "the shadow configuration was not read"
    return sampler


def _texts(sent: Sent, version: int) -> list[str]:
    return [text for v, _, texts in sent if v == version for text in texts]


def test_rates_per_version_and_full_tasks_first(versions: list[int]) -> None:
    active, always, half = versions
    sent: Sent = []
    sampler = _sampler(lambda v, a, texts: sent.append((v, a, list(texts))))
    try:
        assert sampler._rates == {always: 1.0, half: 0.5}
        texts = [f"text {i}" for i in range(9)]
        sampler.offer(texts, active)
        sampler.offer(["pinned to a version"], None)  # not the active version's answer: never sampled
        sampler.offer([f"by {always} {i}" for i in range(400)], always)  # a version never shadows itself
        wait_until(lambda: len(_texts(sent, always)) == 9, 30, "the full tasks and the partial one")
        # Full tasks went out before the partial one, which waited for more texts.
        by_always = [batch for v, a, batch in sent if v == always]
        assert by_always == [texts[0:4], texts[4:8], texts[8:9]]
        assert all(a == active for v, a, _ in sent if v == always)
        wait_until(lambda: sampler.sent == sampler.queued, 30, "every queued text to be sent")
        halved = _texts(sent, half)
        # Binomial(409, 0.5): 6 standard deviations either side.
        assert 204 - 61 < len(halved) < 204 + 61, len(halved)
        assert set(halved) <= set(texts) | {f"by {always} {i}" for i in range(400)}
        assert all(len(batch) <= BATCH for _, _, batch in sent)
        assert sampler.offered == 9 + 400 and sampler.dropped == 0
        assert sampler.published == len(sent) and sampler.send_cpu_s > 0
        # Its OS threads carry their names: top -H, py-spy and bench.shadow find the sender by it.
        sender = next(t for t in sampler._threads if t.name == "shadow-send")
        assert Path(f"/proc/self/task/{sender.native_id}/comm").read_text().strip() == "shadow-send"
    finally:
        sampler.stop()


def test_a_partial_task_waits_for_more_texts(versions: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    _, always, served = versions  # answered by the half-rate version: only `always` samples it
    monkeypatch.setattr(shadow_sampler, "MAX_WAIT_S", 3.0)  # room for a slow machine between offers
    sent: Sent = []
    sampler = _sampler(lambda v, a, texts: sent.append((v, a, list(texts))))
    try:
        sampler.offer(["a", "b"], served)
        time.sleep(2 * shadow_sampler.TICK_S)  # ticks pass: half a task is not published yet
        sampler.offer(["c", "d"], served)
        wait_until(lambda: sampler.sent == 4, 30, "the completed task")
        assert sent == [(always, served, ["a", "b", "c", "d"])]
        sampler.offer(["e"], served)  # alone: it goes out once it waited MAX_WAIT_S
        wait_until(lambda: sampler.sent == 5, 30, "the partial task")
        assert sent[1:] == [(always, served, ["e"])] and sampler.published == 2
    finally:
        sampler.stop()


def test_a_full_queue_drops_and_counts_and_a_broker_error_drops(versions: list[int]) -> None:
    _, always, served = versions  # answered by the half-rate version: only `always` samples it
    publishing, release = threading.Event(), threading.Event()
    sent: Sent = []

    def send(version: int, active_version: int, texts: list[str]) -> None:
        publishing.set()
        assert release.wait(30)
        if texts[0].startswith("refused"):
            raise redis.ConnectionError("the broker is down")
        sent.append((version, active_version, list(texts)))

    sampler = _sampler(send)
    try:
        first = [f"first {i}" for i in range(BATCH)]
        sampler.offer(first, served)  # one full task: the sender takes it and blocks publishing it
        assert publishing.wait(30)
        started = time.monotonic()
        for i in range(QUEUE_MAX + 2):
            sampler.offer([f"refused {i}"], served)
        assert time.monotonic() - started < 1  # offer never waits for the sender
        assert (sampler.queued, sampler.dropped) == (BATCH + QUEUE_MAX, 2)
        release.set()
        wait_until(lambda: sampler.dropped == 2 + QUEUE_MAX, 30, "the refused publish to be counted")
        assert sent == [(always, served, first)]
        assert sampler.sent == BATCH and sampler.published == 1
        assert sampler.offered == BATCH + QUEUE_MAX + 2
    finally:
        sampler.stop()


def test_a_publish_is_routed_without_a_sent_event_or_live_texts(versions: list[int]) -> None:
    """The default publisher: the shadow queue, argsrepr without texts, no task-sent event."""
    from shared.core.celery_app import celery_app

    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url)
    client.delete("shadow")
    events = client.pubsub()
    events.psubscribe("*celeryev*")
    assert events.get_message(timeout=5)["type"] == "psubscribe"
    text = "Angela Merkel spoke to reporters in Berlin."

    def event_published() -> bool:
        message = events.get_message(timeout=2)
        while message is not None and message["type"] != "pmessage":
            message = events.get_message(timeout=2)
        return message is not None

    try:
        # The one app sends a task-sent event with each task (Flower): the check can see one.
        celery_app.send_task(shadow_sampler.COMPARE_TASK, args=[versions[1], versions[0], [text]])
        assert event_published()
        client.delete("shadow")
        shadow_sampler._send_task(settings)(versions[1], versions[0], [text, text])
        assert not event_published()
        assert client.llen("shadow") == 1
        message = json.loads(client.lpop("shadow"))
        assert message["headers"]["task"] == shadow_sampler.COMPARE_TASK
        assert text not in message["headers"]["argsrepr"] and "2 texts" in message["headers"]["argsrepr"]
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args == [versions[1], versions[0], [text, text]] and kwargs == {}
        assert message["headers"]["timelimit"] == [
            settings.shadow_task_time_limit_s,
            max(1, settings.shadow_task_time_limit_s - 10),
        ]
    finally:
        events.close()
        client.delete("shadow")
