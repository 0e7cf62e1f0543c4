"""Job completion callbacks (issue 14), with real processes: a gateway, a Celery worker, and a real
HTTP receiver started here that records every request it gets.

Checked from the receiver's side: one call per finished job, signed so that the HMAC recomputed
here from the raw body matches; a receiver answering 500 twice gets a third attempt after a
backoff; a URL outside NER_CALLBACK_HOSTS is refused at submission; a receiver that is down does
not hold the job up; a redirect is never followed, a name resolving to a private address never
called.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from shared.cli.embedded_redis import free_port
from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.tables import Job
from shared.jobs import callbacks, lifecycle
from tests.support.processes import ServiceProcess, start_gateway, start_worker, wait_until

pytestmark = pytest.mark.slow

SECRET = "callback-secret-for-tests"
TEXTS = [
    "Google was founded by Larry Page and Sergey Brin in California.",
    "Kofi Annan met officials of the European Union in Brussels on Monday.",
    "Angela Merkel spoke to reporters in Berlin.",
]


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1: records each POST, answers the status scripted for its path."""

    scripts: dict[str, list[int]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.calls.append(Call(self.path, dict(self.headers), body, time.monotonic()))
                    script = receiver.scripts.get(self.path) or []
                    status = script.pop(0) if script else 200
                if self.path in receiver.redirects:
                    self.send_response(302)
                    self.send_header("Location", receiver.redirects[self.path])
                else:
                    self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def calls_to(self, path: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def dead_port() -> int:
    return free_port()  # allowed, but nothing listens there


@pytest.fixture(scope="module")
def env(
    service_env: dict[str, str], tiny_model_dir: Path, receiver: Receiver, dead_port: int
) -> dict[str, str]:
    return {
        **service_env,
        "NER_MODEL": str(tiny_model_dir),
        "NER_CHUNK_MAX_DOCUMENTS": "1",
        "NER_CALLBACK_HOSTS": f"127.0.0.1:{receiver.port},127.0.0.1:{dead_port}",
        "NER_CALLBACK_SECRET": SECRET,
        "NER_CALLBACK_BACKOFF_S": "0.5",
        "NER_CALLBACK_TIMEOUT_S": "2",
        "NER_CALLBACK_RETRY_FOR_S": "30",  # the dead receiver is given up before the module ends
        # The watchdog re-sends a callback overdue by this much (a lost message): seconds, not 25.
        "NER_JOB_STALL_TIMEOUT_S": "5",
        "NER_JOB_HEARTBEAT_S": "1",
        "NER_JOB_WATCHDOG_INTERVAL_S": "1",
    }


@pytest.fixture(scope="module")
def stack(env: dict[str, str], log_dir: Path) -> Iterator[tuple[str, ServiceProcess]]:
    gateway, url = start_gateway(env, log_dir)
    worker = start_worker(env, log_dir)
    yield url, worker
    worker.stop()
    gateway.stop()


def submit(url: str, callback_url: str, texts: list[str] = TEXTS) -> str:
    documents = [{"text": text} for text in texts]
    response = httpx.post(
        f"{url}/jobs", json={"documents": documents, "callback_url": callback_url}, timeout=30
    )
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def job(url: str, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()


def assert_signed(call: Call) -> None:
    """The HMAC recomputed here, as a receiver would (Stripe's scheme), matches the header."""
    fields = dict(part.split("=", 1) for part in call.headers["X-NER-Signature"].split(","))
    timestamp = int(fields["t"])
    assert abs(time.time() - timestamp) < 120
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + call.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert not callbacks.verify(header=call.headers["X-NER-Signature"], body=call.body + b" ", secret=SECRET)
    assert not callbacks.verify(header=call.headers["X-NER-Signature"], body=call.body, secret=SECRET + "x")
    assert callbacks.verify(header=call.headers["X-NER-Signature"], body=call.body, secret=SECRET)


def test_each_finished_job_gets_one_signed_call(
    stack: tuple[str, ServiceProcess], receiver: Receiver
) -> None:
    url, worker = stack
    done_id = submit(url, receiver.url("/hook/done"))
    cancelled_id = submit(url, receiver.url("/hook/cancelled"), TEXTS * 20)  # 60 chunks of one document
    cancel = httpx.post(f"{url}/jobs/{cancelled_id}/cancel", timeout=30)
    assert cancel.status_code == 202, cancel.text

    for path in ("/hook/done", "/hook/cancelled"):
        wait_until(lambda path=path: receiver.calls_to(path), 120, f"a callback to {path}", worker)
    time.sleep(3)  # time for a duplicate, if there were one
    for path, job_id, status in [
        ("/hook/done", done_id, "succeeded"),
        ("/hook/cancelled", cancelled_id, "cancelled"),
    ]:
        (call,) = receiver.calls_to(path)
        assert call.headers["Content-Type"] == "application/json"
        assert_signed(call)
        body = json.loads(call.body)
        view = job(url, job_id)
        assert body == {
            "job_id": job_id,
            "status": status,
            "counts": {"total": view["total"], "done": view["done"], "failed": view["failed"]},
            "results_url": f"/jobs/{job_id}/results",
        }
        assert view["status"] == status
        callback = view["callback"]
        assert callback["url"] == receiver.url(path) and callback["delivered"] is True
        assert [(a["status_code"], a["error"]) for a in callback["attempts"]] == [(200, None)]
    assert job(url, done_id)["done"] == len(TEXTS)


def test_a_receiver_answering_500_twice_gets_the_third_attempt(
    stack: tuple[str, ServiceProcess], receiver: Receiver
) -> None:
    url, worker = stack
    receiver.scripts["/hook/flaky"] = [500, 500]
    job_id = submit(url, receiver.url("/hook/flaky"))
    wait_until(lambda: len(receiver.calls_to("/hook/flaky")) >= 3, 120, "three callback attempts", worker)
    time.sleep(3)
    calls = receiver.calls_to("/hook/flaky")
    assert len(calls) == 3  # delivered on the third: no fourth
    assert len({call.body for call in calls}) == 1
    for call in calls:
        assert_signed(call)
    first_gap, second_gap = calls[1].at - calls[0].at, calls[2].at - calls[1].at
    assert first_gap >= 0.45 and second_gap >= 0.95, (first_gap, second_gap)  # 0.5 s, then doubled
    callback = job(url, job_id)["callback"]
    assert [a["status_code"] for a in callback["attempts"]] == [500, 500, 200]
    assert callback["delivered"] is True and callback["state"] == "delivered"


def test_a_failed_job_and_a_lost_message_still_get_their_call(
    stack: tuple[str, ServiceProcess], receiver: Receiver
) -> None:
    url, worker = stack
    failed_id = submit(url, receiver.url("/hook/failed"), TEXTS * 20)
    with session_scope() as session:  # what a pinned model that cannot be loaded does
        lifecycle.fail_job(session=session, job_id=uuid.UUID(failed_id), error="the model went away")
    wait_until(lambda: receiver.calls_to("/hook/failed"), 60, "the failed job's callback", worker)
    (call,) = receiver.calls_to("/hook/failed")
    assert_signed(call)
    assert json.loads(call.body)["status"] == "failed" and job(url, failed_id)["status"] == "failed"

    # A delivered callback whose record says pending and overdue, as after a broker lost the
    # message: the watchdog sends it again, once.
    lost_id = submit(url, receiver.url("/hook/lost"))
    # Delivered and recorded (the receiver hears of it before the worker writes it down).
    wait_until(lambda: job(url, lost_id)["callback"]["delivered"], 60, "the callback", worker)
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(lost_id))
            .values(callback_state="pending", callback_next_at=lifecycle.utcnow() - timedelta(seconds=30))
        )
    wait_until(lambda: len(receiver.calls_to("/hook/lost")) == 2, 60, "the watchdog's re-send", worker)
    time.sleep(3)
    assert len(receiver.calls_to("/hook/lost")) == 2
    assert [a["status_code"] for a in job(url, lost_id)["callback"]["attempts"]] == [200, 200]
    assert "overdue job callback(s) again" in worker.log()


def test_a_receiver_that_is_down_does_not_hold_the_job_up(
    stack: tuple[str, ServiceProcess], receiver: Receiver, dead_port: int
) -> None:
    url, worker = stack
    started = time.monotonic()
    slow_id = submit(url, f"http://127.0.0.1:{dead_port}/hook")
    wait_until(lambda: job(url, slow_id)["status"] == "succeeded", 120, "the job", worker)
    took = time.monotonic() - started
    wait_until(lambda: len(job(url, slow_id)["callback"]["attempts"]) >= 2, 60, "two attempts", worker)
    callback = job(url, slow_id)["callback"]
    assert callback["delivered"] is False and callback["state"] == "pending"
    assert all(a["status_code"] is None and a["error"] for a in callback["attempts"])
    # A job that calls a live receiver takes as long: the dead one cost it nothing.
    started = time.monotonic()
    fast_id = submit(url, receiver.url("/hook/timing"))
    wait_until(lambda: job(url, fast_id)["status"] == "succeeded", 120, "the job", worker)
    assert took < 3 * (time.monotonic() - started) + 5


@pytest.mark.parametrize(
    "bad",
    [
        "http://127.0.0.1:1/hook",  # an allowed host, not an allowed port
        "http://localhost:{port}/hook",  # the same machine by another name: not on the list
        "http://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/hook",
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/",
        "http://user:pw@127.0.0.1:{port}/hook",
        "not a url",
    ],
)
def test_a_callback_url_outside_the_allow_list_is_refused_at_submission(
    stack: tuple[str, ServiceProcess], receiver: Receiver, bad: str
) -> None:
    url, _ = stack
    with session_scope() as session:
        before = session.scalar(select(func.count()).select_from(Job))
    response = httpx.post(
        f"{url}/jobs",
        json={"documents": [{"text": TEXTS[0]}], "callback_url": bad.format(port=receiver.port)},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert "callback_url" in response.json()["detail"]
    if bad.startswith("http://127.0.0.1:1/") or "169.254" in bad or "10.0.0.1" in bad:
        assert f"127.0.0.1:{receiver.port}" in response.json()["detail"]  # the allowed values
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == before


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.redirects["/hook/moved"] = receiver.url("/hook/elsewhere")
    settings = Settings(callback_hosts=[f"127.0.0.1:{receiver.port}"], callback_secret=SECRET)
    result = callbacks.post(url=receiver.url("/hook/moved"), body=b"{}", settings=settings)
    assert result.status_code == 302 and not result.delivered
    assert receiver.calls_to("/hook/moved") and not receiver.calls_to("/hook/elsewhere")


def test_names_resolving_to_private_addresses_are_never_called(receiver: Receiver) -> None:
    allowed = ["hooks.example.test", f"local.example.test:{receiver.port}", "127.0.0.1"]
    settings = Settings(callback_hosts=allowed, callback_secret=SECRET)

    def resolver(answers: list[str]) -> Any:
        return lambda host, port: answers

    target = callbacks.parse_target("https://hooks.example.test/hook")
    for private in (["10.0.0.7"], ["93.184.216.34", "192.168.1.1"], ["::1"], ["169.254.169.254"]):
        with pytest.raises(callbacks.CallbackRefused):
            callbacks.resolve_allowed(target, allowed, resolver(private))
    assert callbacks.resolve_allowed(target, allowed, resolver(["93.184.216.34"])) == "93.184.216.34"
    assert callbacks.resolve_allowed(target, allowed, resolver(["127.0.0.1"])) == "127.0.0.1"  # listed

    # Sent to the resolved address itself, with the URL's host in the Host header.
    before = len(receiver.calls)
    refused = callbacks.post(
        url=f"http://local.example.test:{receiver.port}/hook/named",
        body=b"{}",
        settings=Settings(callback_hosts=[f"local.example.test:{receiver.port}"], callback_secret=SECRET),
        resolver=resolver(["127.0.0.1"]),
    )
    assert refused.permanent and "127.0.0.1" in str(refused.error) and len(receiver.calls) == before
    sent = callbacks.post(
        url=f"http://local.example.test:{receiver.port}/hook/named",
        body=b"{}",
        settings=settings,
        resolver=resolver(["127.0.0.1"]),
    )
    assert sent.status_code == 200
    (call,) = receiver.calls_to("/hook/named")
    assert call.headers["Host"] == f"local.example.test:{receiver.port}"


def test_unsigned_callbacks_are_a_settings_error() -> None:
    with pytest.raises(ValueError, match="NER_CALLBACK_SECRET"):
        Settings(callback_hosts=["hooks.example.test"], callback_secret=None)
