"""Security, against a real gateway process with auth on: every route's key and scope checks,
other keys' jobs, path traversal, oversized headers and bodies, injection-shaped filters."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import select as io_select
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from gateway.app import create_app
from gateway.guard import BodyGuardMiddleware
from shared.core.config import get_settings
from shared.core.db import get_sessionmaker
from shared.core.redis import redis_client
from shared.core.tables import (
    ApiKey,
    DocumentStatus,
    Job,
    JobDocument,
    JobResult,
    JobStatus,
    RunStatus,
    TrainingRun,
    TrainingUpload,
)
from shared.keys import service as keys
from shared.training.errors import DataError
from shared.training.references import DataSpec, check_references
from tests.support.auth import settings_env
from tests.support.processes import ServiceProcess, start_gateway, wait_until

SCOPES = ("predict", "jobs", "train", "admin", "metrics")
PUBLIC_OPERATIONS = {("GET", "/healthz"), ("GET", "/readyz")}
# Probes of the other protocols (issue 13): KServe V2 health, Label Studio's ML backend health.
PUBLIC_OPERATIONS |= {("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/labelstudio/health")}
PASSWD_LINE = "root:x:0:0"
ALLOWED_BASE_MODEL = "allowed-owner/allowed-encoder@0123456789abcdef0123456789abcdef01234567"
INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE jobs;--",
    '" OR ""="',
    "%' --",
    "1 UNION SELECT key_hash FROM api_keys",
]


def expected_scope(method: str, path: str) -> str:
    """Which scope each route needs (admin passes all; ``any``: every live key)."""
    if path == "/keys/me":  # a key reads its own name and scopes
        return "any"
    if path.startswith(("/predict", "/redact")):
        return "predict"
    if path == "/labelstudio/webhook":  # Label Studio's START_TRAINING
        return "train"
    if path.startswith(("/hf", "/v2", "/labelstudio")):  # other protocols' predict (issue 13)
        return "predict"
    if path.startswith("/jobs"):
        return "jobs"
    if path == "/metrics":
        return "metrics"
    if path.endswith("/activate") or path == "/models/import":
        return "admin"
    if path.endswith("/shadow") and method != "GET":  # marking a shadow version; reading it is train
        return "admin"
    if path.startswith(("/train", "/models")):
        return "train"
    raise AssertionError(f"no expected scope for {method} {path}: add the new route here")


@dataclass
class Keys:
    by_scope: dict[str, str]
    other_jobs: str  # a second jobs key
    other_train: str
    ids: dict[str, int]


@dataclass
class Gateway:
    url: str
    keys: Keys
    process: ServiceProcess

    def get(self, path: str, scope: str | None = None, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        return self.request("GET", path, scope, **kwargs)

    def request(self, method: str, path: str, scope: str | None = None, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        headers = dict(kwargs.pop("headers", {}))
        if scope is not None:
            headers["X-API-Key"] = self.keys.by_scope.get(scope, scope)
        response = httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)
        assert response.status_code < 500 or response.status_code == 503, (method, path, response.text)
        return response


def _create(scope: str, name: str) -> tuple[str, int]:
    with get_sessionmaker()() as session:
        created = keys.create_key(session=session, scope=scope, name=name)
    return created.plaintext, created.id


@pytest.fixture(scope="module")
def gateway(service_env: dict[str, str], log_dir: Path) -> Iterator[Gateway]:
    by_scope, ids = {}, {}
    for scope in SCOPES:
        by_scope[scope], ids[scope] = _create(scope, f"security {scope}")
    other_jobs, ids["other_jobs"] = _create("jobs", "security other jobs")
    other_train, ids["other_train"] = _create("train", "security other train")
    env = {
        **service_env,
        "NER_AUTH": "on",
        "NER_PREDICT_MAX_CHARS": "1000",
        "NER_PREDICT_BATCH_MAX_TEXTS": "8",
        "NER_JOB_JSON_MAX_BYTES": "100000",
        "NER_PREDICT_BATCH_MAX_CHARS": "4000",
        "NER_BODY_MAX_BYTES": "2000000",
        "NER_TRAIN_UPLOAD_MAX_BYTES": "200000",
        "NER_TRAIN_UPLOAD_QUOTA_BYTES": "5000",
        "NER_TRAIN_MAX_QUEUED_RUNS": "2",
        "NER_BASE_MODEL_ALLOW": f"{ALLOWED_BASE_MODEL}",
        # The probes below send many wrong keys on purpose; the throttle has tests of its own.
        "NER_AUTH_FAIL_LIMIT": "100000",
    }
    proc, url = start_gateway(env, log_dir)
    try:
        yield Gateway(url, Keys(by_scope, other_jobs, other_train, ids), proc)
    finally:
        proc.stop()
    log = proc.log()
    for secret in [*by_scope.values(), other_jobs, other_train]:
        assert secret not in log, "an API key in the gateway's log"


def _operations(gateway: Gateway) -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
    schema = httpx.get(gateway.url + "/openapi.json", timeout=10).json()
    return [(method.upper(), path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def _fill(path: str, op: dict) -> str:  # type: ignore[type-arg]
    for param in op.get("parameters", []):
        if param["in"] == "path":
            value = "999999" if param.get("schema", {}).get("type") == "integer" else str(uuid.uuid4())
            path = path.replace("{" + param["name"] + "}", value)
    return path


# --- keys and scopes on every route ---------------------------------------------------------


def test_only_probes_are_public(gateway: Gateway) -> None:
    public = {(method, path) for method, path, op in _operations(gateway) if not op.get("security")}
    assert public == PUBLIC_OPERATIONS
    for path in ("/healthz", "/docs", "/openapi.json", "/"):
        assert gateway.get(path).status_code == 200, path
    assert gateway.get("/readyz").status_code in (200, 503)


def test_every_route_wants_a_key_and_its_scope(gateway: Gateway) -> None:
    checked = 0
    for method, path, op in _operations(gateway):
        if (method, path) in PUBLIC_OPERATIONS:
            continue
        url, needed = _fill(path, op), expected_scope(method, path)
        missing = gateway.request(method, url)
        assert missing.status_code == 401, (method, path)
        assert "WWW-Authenticate" in missing.headers
        assert gateway.request(method, url, "ner_0123abcd_" + "x" * 43).status_code == 401, (method, path)
        for scope in SCOPES:
            status = gateway.request(method, url, scope).status_code
            if scope in (needed, "admin") or needed == "any":
                assert status not in (401, 403), (method, path, scope, status)
            else:
                assert status == 403, (method, path, scope, status)
        checked += 1
    assert checked >= 15  # predict, jobs, train, models, metrics


# --- another key's job or run: 404, exactly like one that does not exist ----------------------


@pytest.fixture
def owned(gateway: Gateway) -> Iterator[dict[str, uuid.UUID]]:
    """A finished job of the first jobs key (with a result) and a finished run of the first train key."""
    now = datetime.now(UTC)
    job_id, run_id = uuid.uuid4(), uuid.uuid4()
    with get_sessionmaker()() as session:
        session.add(
            Job(
                id=job_id, status=JobStatus.succeeded, total=1, done=1, total_chars=20, model_ref="test",
                api_key_id=gateway.keys.ids["jobs"], created_at=now, started_at=now, finished_at=now,
                expires_at=now + timedelta(days=1),
            )
        )  # fmt: skip
        session.flush()
        session.add(JobDocument(job_id=job_id, seq=0, client_id="secret-doc", text="Secret Person in Lyon"))
        session.add(
            JobResult(
                job_id=job_id, seq=0, status=DocumentStatus.done,
                entities=[{"word": "Secret Person", "entity_group": "PER", "score": 0.9, "start": 0, "end": 13}],  # noqa: E501
            )
        )  # fmt: skip
        session.add(TrainingRun(id=run_id, status=RunStatus.succeeded, api_key_id=gateway.keys.ids["train"]))
        session.commit()
    yield {"job": job_id, "run": run_id}
    with get_sessionmaker()() as session:
        session.execute(delete(Job).where(Job.id == job_id))
        session.execute(delete(TrainingRun).where(TrainingRun.id == run_id))
        session.commit()


def test_another_keys_job_is_404_like_a_missing_one(gateway: Gateway, owned: dict[str, uuid.UUID]) -> None:
    job, missing = owned["job"], uuid.uuid4()
    owner, other = gateway.keys.by_scope["jobs"], gateway.keys.other_jobs
    for suffix, method in (("", "GET"), ("/results", "GET"), ("/entities", "GET"), ("/cancel", "POST")):
        theirs = gateway.request(method, f"/jobs/{job}{suffix}", other)
        nothing = gateway.request(method, f"/jobs/{missing}{suffix}", other)
        assert theirs.status_code == nothing.status_code == 404, suffix
        assert theirs.text.replace(str(job), "ID") == nothing.text.replace(str(missing), "ID")
        assert "Secret" not in theirs.text
    assert str(job) not in gateway.get("/jobs", other).text
    # The owner and admins do see it.
    mine = gateway.get(f"/jobs/{job}/results", owner)
    assert mine.status_code == 200 and "Secret Person" in mine.text
    assert str(job) in gateway.get("/jobs", owner).text
    assert gateway.get(f"/jobs/{job}", "admin").status_code == 200


def test_another_keys_training_run_is_404(gateway: Gateway, owned: dict[str, uuid.UUID]) -> None:
    run, other = owned["run"], gateway.keys.other_train
    assert gateway.get(f"/train/{run}", other).status_code == 404
    assert gateway.request("POST", f"/train/{run}/cancel", other).status_code == 404
    assert str(run) not in gateway.get("/train", other).text
    assert gateway.get(f"/train/{run}", "train").status_code == 200


# --- path traversal -------------------------------------------------------------------------


def _raw_get(base: str, raw_path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET with the path sent byte for byte (HTTP clients would normalise the dots away)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.parametrize(
    "raw_path",
    [
        "/static/../../../../etc/passwd",
        "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/....//....//etc/passwd",
        "/jobs/..%2f..%2f..%2fetc%2fpasswd",
        "/jobs/../../etc/passwd",
        "/train/..%2f..%2fetc%2fpasswd",
        "/models/..%2f1",
        "/../../../etc/passwd",
    ],
)
def test_traversal_in_paths_reads_nothing(gateway: Gateway, raw_path: str) -> None:
    for scope in ("admin", None):
        headers = {"X-API-Key": gateway.keys.by_scope[scope]} if scope else {}
        status, body = _raw_get(gateway.url, raw_path, headers)
        assert 400 <= status < 500, (raw_path, status)
        assert PASSWD_LINE not in body


@pytest.mark.parametrize(
    "body",
    [
        {"data": "../../../../etc"},
        {"data": "/etc/passwd"},
        {"data": {"train": "../../../../etc/passwd"}},
        {"data": {"train": "/etc/passwd", "validation": "/etc/shadow"}},
        {"data": {"train": "uploads/../../../../etc/passwd"}},
    ],
)
def test_traversal_in_training_data_is_refused(gateway: Gateway, body: dict) -> None:  # type: ignore[type-arg]
    response = gateway.request("POST", "/train", "train", json=body)
    assert response.status_code == 422, response.text
    assert PASSWD_LINE not in response.text


@pytest.mark.parametrize("base_model", ["../../../../etc", "/etc", "~/../../etc"])
def test_traversal_in_the_base_model_is_refused(gateway: Gateway, base_model: str) -> None:
    body = {"data": str(get_settings().conll_dir), "base_model": base_model, "epochs": 1}
    response = gateway.request("POST", "/train", "train", json=body)
    if response.status_code == 202:  # leave no such run for a later test's trainer or registry
        run_id = uuid.UUID(response.json()["run_id"])
        gateway.request("POST", f"/train/{run_id}/cancel", "train")
        with get_sessionmaker()() as session:
            session.execute(delete(TrainingRun).where(TrainingRun.id == run_id))
            session.commit()
    assert response.status_code == 422, response.text


def test_traversal_in_an_upload_name_stays_in_the_uploads_folder(gateway: Gateway) -> None:
    uploads = get_settings().uploads_dir.resolve()
    escaped = uploads.parent.parent / "escaped.conll"
    response = gateway.request(
        "POST",
        "/train/uploads",
        "train",
        files={"file": ("../../../escaped.conll", b"EU B-ORG\nrejects O\n\n", "text/plain")},
    )
    assert response.status_code == 201, response.text
    stored = Path(response.json()["path"]).resolve()
    assert stored.is_relative_to(uploads) and stored.name == "escaped.conll"
    assert not escaped.exists()


# --- oversized headers and bodies -----------------------------------------------------------


def test_oversized_headers_are_refused_and_the_gateway_lives(gateway: Gateway) -> None:
    for headers in (
        {"X-Padding": "a" * 200_000},
        {f"X-Pad-{i}": "b" * 100 for i in range(2000)},
        {"X-API-Key": "ner_0123abcd_" + "k" * 60_000},
    ):
        try:
            status = httpx.get(gateway.url + "/jobs", headers=headers, timeout=10).status_code
        except httpx.HTTPError:
            status = None  # the server closed the connection: refused as well
        assert status is None or 400 <= status < 500, status
    # A long but acceptable key or request id is answered normally.
    assert gateway.get("/jobs", "ner_0123abcd_" + "k" * 5000).status_code == 401
    replaced = gateway.get("/healthz", headers={"X-Request-ID": "r" * 5000})
    assert replaced.status_code == 200 and len(replaced.headers["X-Request-ID"]) == 32
    assert gateway.get("/healthz").status_code == 200


def test_oversized_bodies_get_413(gateway: Gateway) -> None:
    too_long = gateway.request("POST", "/predict/", "predict", json={"text": "a" * 1001})
    assert too_long.status_code == 413 and "NER_PREDICT_MAX_CHARS" in too_long.text
    too_many = gateway.request("POST", "/predict/batch", "predict", json={"texts": ["a"] * 9})
    assert too_many.status_code == 413
    big_job = {"documents": [{"id": str(i), "text": "x" * 1000} for i in range(200)]}
    assert gateway.request("POST", "/jobs", "jobs", json=big_job).status_code == 413
    # Not JSON, or nested past reason: a 4xx, never a 500.
    for content in (b"{" * 100_000, b"\xff\xfe" * 1000, b"[" * 50_000 + b"]" * 50_000):
        for path, scope in (("/predict/", "predict"), ("/jobs", "jobs"), ("/train", "train")):
            response = gateway.request(
                "POST", path, scope, content=content, headers={"Content-Type": "application/json"}
            )
            assert 400 <= response.status_code < 500, (path, response.status_code)


# --- injection-shaped filters ---------------------------------------------------------------


def test_injection_shaped_filters_change_nothing_and_leak_nothing(
    gateway: Gateway, owned: dict[str, uuid.UUID]
) -> None:
    with get_sessionmaker()() as session:
        keys_before = session.scalar(select(func.count()).select_from(ApiKey))
    other = gateway.keys.other_jobs
    for text in INJECTIONS:
        for path, params in (
            ("/jobs", {"status": text}),
            ("/jobs", {"cursor": text}),
            ("/jobs", {"limit": text}),
            (f"/jobs/{owned['job']}/entities", {"type": text}),
            (f"/jobs/{owned['job']}/results", {"cursor": text, "format": text}),
            ("/train", {"limit": text}),
        ):
            for key in ("jobs", other, "train"):
                response = gateway.get(path, key, params=params)
                assert response.status_code in (200, 403, 404, 422), (path, params, response.status_code)
                if key == other:  # the job's own routes answer 404; lists do not name it
                    assert "Secret" not in response.text
                    assert response.status_code in (404, 422) if str(owned["job"]) in path else True
                    assert str(owned["job"]) in path or str(owned["job"]) not in response.text
                assert "scrypt$" not in response.text  # no stored hash, whatever the query
        for path in (f"/jobs/{text}", f"/models/{text}", f"/train/{text}"):
            assert gateway.get(path, "admin").status_code in (404, 422), path
    with get_sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == keys_before
        assert session.get(Job, owned["job"]) is not None
    listed = gateway.get("/jobs", "jobs", params={"status": "succeeded"})
    assert listed.status_code == 200 and str(owned["job"]) in listed.text
    assert json.loads(listed.text)  # still a normal answer


# --- trust boundaries (issue 12) -------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _send_streamed(
    base: str, path: str, headers: dict[str, str], declared: int, wait_first_s: float = 3.0
) -> tuple[int | None, int, str]:
    """POST declaring ``declared`` bytes, then stream them from a generator until the server answers.

    Returns the status (None when the server closed without one), how many body bytes it took and
    the raw answer.
    The test stays small: 1 MiB at a time, never the whole body in memory.
    """
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Length: {declared}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    piece = b" " * (1 << 20)

    def body() -> Iterator[bytes]:
        left = declared
        while left > 0:
            yield piece[: min(left, len(piece))]
            left -= len(piece)

    sent = 0
    try:
        sock.sendall(head.encode())
        # A guarded gateway answers from the headers alone; give it the time to.
        answered, _, _ = io_select.select([sock], [], [], wait_first_s)
        if not answered:
            for chunk in body():
                if io_select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(chunk)
                sent += len(chunk)
        response = b""
        while data := sock.recv(65536):  # the guard closes the connection after its answer
            response += data
    except OSError:
        response = b""
    finally:
        sock.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None
    return status, sent, response.decode(errors="replace")


def test_an_unauthenticated_huge_body_is_refused_before_it_is_read(gateway: Gateway) -> None:
    """Row 3: 800 MB of JSON and a 1 GB upload without a key: 401 from the headers, RSS flat."""
    pid = gateway.process.pid
    before = _rss_bytes(pid)
    for path, content_type, size in (
        ("/predict/", "application/json", 800 * 1024**2),
        ("/train/uploads", "multipart/form-data; boundary=x", 1024**3),
        ("/jobs", "application/json", 800 * 1024**2),
    ):
        status, sent, answer = _send_streamed(gateway.url, path, {"Content-Type": content_type}, size)
        assert status == 401, (path, status, answer[-300:])
        assert sent < 50 * 1024**2, (path, sent)
    assert _rss_bytes(pid) - before < 50 * 1024**2
    # A wrong key is refused the same way.
    status, sent, _ = _send_streamed(
        gateway.url, "/predict/", {"X-API-Key": "ner_0123abcd_" + "x" * 43}, 800 * 1024**2
    )
    assert (status, sent) == (401, 0)


def test_a_body_over_its_route_cap_is_413_from_the_declared_length(gateway: Gateway) -> None:
    for path, scope, size, setting in (
        ("/predict/", "predict", 800 * 1024**2, "NER_PREDICT_MAX_CHARS"),
        ("/train/uploads", "train", 300_000 + (1 << 20), "NER_TRAIN_UPLOAD_MAX_BYTES"),
        ("/train", "train", 3_000_000, "NER_BODY_MAX_BYTES"),
        ("/jobs", "jobs", 200_000, "NER_JOB_JSON_MAX_BYTES"),
    ):
        headers = {"X-API-Key": gateway.keys.by_scope[scope], "Content-Type": "application/json"}
        status, sent, answer = _send_streamed(gateway.url, path, headers, size)
        assert (status, sent) == (413, 0), (path, status, sent, answer[-300:])
        assert setting in answer, (path, answer[-300:])


def test_a_streamed_body_is_cut_at_its_cap() -> None:
    """A chunked body (no Content-Length) is counted as it arrives: 413 once past the cap, and the
    route never sees more than the cap."""
    seen: list[int] = []

    async def route(scope, receive, send):  # type: ignore[no-untyped-def]
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict] = []  # type: ignore[type-arg]
    pieces = [{"type": "http.request", "body": b"x" * 400_000, "more_body": True} for _ in range(10)]

    async def receive():  # type: ignore[no-untyped-def]
        return pieces.pop(0)

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/healthz", "headers": [(b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1), "query_string": b"",
    }  # fmt: skip
    with settings_env({"NER_BODY_MAX_BYTES": "1000000", "NER_AUTH": "off"}):
        asyncio.run(BodyGuardMiddleware(route)(scope, receive, send))
    assert sent[0]["status"] == 413
    assert b"NER_BODY_MAX_BYTES" in sent[1]["body"]
    assert seen and seen[0] <= 1_000_000
    assert len(pieces) >= 6  # the rest was never read


def test_hub_references_never_reach_local_folders(gateway: Gateway, tmp_path: Path) -> None:
    """Row 2: "hf:" plus a path is refused with a message naming the reference and nothing found there."""
    outside = tmp_path / "csvdir"
    outside.mkdir()
    (outside / "data.csv").write_text("secret_header,other\n1,2\n")
    roots = [str(root) for root in get_settings().data_roots]
    for data in (
        "hf:/etc",
        "hf:../../..",
        f"hf:{outside}",
        "hf:./x",
        "hf:owner/name/../../etc",
        "hf:owner/name/extra",
        {"train": "hf:~/x"},
        "..",
        "a/b/c",
    ):
        response = gateway.request("POST", "/train", "train", json={"data": data})
        assert response.status_code == 422, (data, response.text)
        assert "secret_header" not in response.text and PASSWD_LINE not in response.text
        assert not any(root in response.text for root in roots), response.text
    outside_ref = gateway.request("POST", "/train", "train", json={"data": str(outside)})
    assert outside_ref.status_code == 422 and "NER_DATA_ROOTS" in outside_ref.text
    assert not any(root in outside_ref.text for root in roots)


def test_hub_data_can_be_switched_off(tmp_path: Path) -> None:
    spec = DataSpec(train="hf:owner/dataset")
    check_references(spec, roots=[tmp_path])  # a well-formed id passes by default
    with pytest.raises(DataError, match="NER_ALLOW_HUB_DATA"):
        check_references(spec, roots=[tmp_path], allow_hub=False)
    with pytest.raises(DataError, match="NER_ALLOW_HUB_DATA"):
        check_references(DataSpec(train="owner/dataset"), roots=[tmp_path], allow_hub=False)


def test_batch_total_characters_are_capped(gateway: Gateway) -> None:
    """Row 4: each text within its limit, the batch over NER_PREDICT_BATCH_MAX_CHARS: 413."""
    response = gateway.request("POST", "/predict/batch", "predict", json={"texts": ["a" * 1000] * 5})
    assert response.status_code == 413 and "NER_PREDICT_BATCH_MAX_CHARS" in response.text


def test_the_rate_limit_charges_characters_and_keys_have_their_own(gateway: Gateway) -> None:
    """Row 4 and issue 21: a key made with 6 requests a minute; one 4,000-character batch costs 5."""
    with get_sessionmaker()() as session:
        key = keys.create_key(session=session, scope="predict", name="six a minute", rate_limit_per_minute=6)
    batch = {"texts": ["Paris " * 160] * 4}  # 3,840 characters: 1 + 3 tokens
    first = gateway.request("POST", "/predict/batch", key.plaintext, json=batch)
    assert first.status_code != 429, first.text
    second = gateway.request("POST", "/predict/batch", key.plaintext, json=batch)
    assert second.status_code == 429, second.text
    assert int(second.headers["Retry-After"]) >= 1 and "6 requests a minute" in second.text
    # Another key's budget is its own.
    other = gateway.request("POST", "/predict/", "predict", json={"text": "Paris"})
    assert other.status_code != 429


def test_lone_surrogates_nan_and_huge_numbers_are_4xx_without_echo(gateway: Gateway) -> None:
    """Rows 8 and 12: never a 500, and a 422 names the field without sending the input back."""
    raw = {"Content-Type": "application/json"}
    for path, scope, content in (
        ("/predict/", "predict", b'{"text": "\\ud800"}'),
        ("/predict/batch", "predict", b'{"texts": ["ok", "\\udfff"]}'),
        ("/train", "train", b'{"data": "\\ud800"}'),
        ("/train", "train", b'{"data": "x.conll", "learning_rate": NaN}'),
        ("/train", "train", b'{"data": "x.conll", "learning_rate": Infinity}'),
        ("/train", "train", b'{"data": "x.conll", "seed": 1000000000000000000000000000000}'),
        ("/train", "train", b'{"data": "a\\u0000b"}'),
    ):
        response = gateway.request("POST", path, scope, content=content, headers=raw)
        assert response.status_code == 422, (path, content, response.text)
        assert "NaN" not in response.text and "Infinity" not in response.text
        assert "10000000000" not in response.text
    big = b'{"data": "x.conll", "epochs": "' + b"A" * 900_000 + b'"}'
    response = gateway.request("POST", "/train", "train", content=big, headers=raw)
    assert response.status_code == 422 and len(response.content) < 2000, len(response.content)
    assert "epochs" in response.text


def test_keys_in_urls_are_redacted_in_every_log_field(gateway: Gateway) -> None:
    """Row 10: a key pasted into a path shows up only as its prefix, in the message and in "path"."""
    secret = "ner_0badc0de_" + "S3cr3t" * 8
    gateway.get(f"/jobs/{secret}", "jobs")
    gateway.get("/healthz", params={"key": secret})
    log = gateway.process.log()
    assert "ner_0badc0de_[redacted]" in log
    assert "S3cr3t" not in log


def test_model_versions_show_paths_and_data_to_admins_only(gateway: Gateway, tmp_path: Path) -> None:
    """Row 11: another train key sees no data references, artifact path or local base model."""
    from shared.core.tables import ModelVersion, VersionStatus

    secret_data = str(tmp_path / "team-a" / "private.conll")
    with get_sessionmaker()() as session:
        number = (session.scalar(select(func.max(ModelVersion.version))) or 0) + 1000
        session.add(
            ModelVersion(
                version=number, status=VersionStatus.candidate, path=str(tmp_path / "artifacts" / "v"),
                base_model=str(tmp_path / "base"), data_hash="h", data_ref={"train": secret_data},
            )
        )  # fmt: skip
        session.commit()
    try:
        for path in (f"/models/{number}", "/models"):
            seen = gateway.get(path, gateway.keys.other_train)
            assert seen.status_code == 200, seen.text
            assert str(tmp_path) not in seen.text, path
            assert str(tmp_path) in gateway.get(path, "admin").text, path
    finally:
        with get_sessionmaker()() as session:
            session.execute(delete(ModelVersion).where(ModelVersion.version == number))
            session.commit()


def test_the_run_list_filters_by_owner_before_the_limit(gateway: Gateway) -> None:
    """Row 13: other keys' newer runs do not push a caller's own run off its list."""
    now = datetime.now(UTC)
    mine = uuid.uuid4()
    theirs = [uuid.uuid4() for _ in range(5)]
    with get_sessionmaker()() as session:
        session.add(
            TrainingRun(id=mine, status=RunStatus.succeeded, api_key_id=gateway.keys.ids["other_train"],
                        created_at=now - timedelta(hours=1))
        )  # fmt: skip
        for index, run_id in enumerate(theirs):
            session.add(
                TrainingRun(id=run_id, status=RunStatus.succeeded, api_key_id=gateway.keys.ids["train"],
                            created_at=now + timedelta(seconds=index))
            )  # fmt: skip
        session.commit()
    try:
        listed = gateway.get("/train", gateway.keys.other_train, params={"limit": 1}).json()["runs"]
        assert [run["run_id"] for run in listed] == [str(mine)]
    finally:
        with get_sessionmaker()() as session:
            session.execute(delete(TrainingRun).where(TrainingRun.id.in_([mine, *theirs])))
            session.commit()


def test_security_headers_and_no_cors_by_default(gateway: Gateway) -> None:
    """Row 14: CSP with frame-ancestors 'none', nosniff, Referrer-Policy; no CORS grant by default."""
    for path, scope in (("/", None), ("/docs", None), ("/jobs", "jobs"), ("/nowhere", None)):
        response = gateway.get(path, scope, headers={"Origin": "http://evil.example"})
        csp = response.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, csp)
        assert response.headers.get("X-Content-Type-Options") == "nosniff", path
        assert response.headers.get("Referrer-Policy") == "no-referrer", path
        assert response.headers.get("X-Frame-Options") == "DENY", path
        assert "Access-Control-Allow-Origin" not in response.headers, path


def test_docs_are_served_from_local_assets(gateway: Gateway) -> None:
    """Row 14: /docs and /redoc load nothing from another origin, and their assets are here."""
    for page in ("/docs", "/redoc"):
        html = gateway.get(page).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources, page
        for source in sources:
            assert "://" not in source and not source.startswith("//"), (page, source)
            asset = gateway.get("/" + source.lstrip("/"))
            assert asset.status_code == 200 and len(asset.content) > 100, (page, source)
        assert "<script>" not in html  # no inline script: the CSP forbids them


def test_cors_origins_are_wired(service_env: dict[str, str]) -> None:
    with settings_env({"NER_CORS_ORIGINS": "https://ui.example"}):
        client = TestClient(create_app())
        allowed = client.options(
            "/jobs",
            headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "X-API-Key"},
        )  # fmt: skip
        assert allowed.headers.get("Access-Control-Allow-Origin") == "https://ui.example"
        other = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


# --- training uploads and runs: owned, with quotas (row 6) ------------------------------------


def _cleanup_runs(key_id: int) -> None:
    with get_sessionmaker()() as session:
        session.execute(delete(TrainingRun).where(TrainingRun.api_key_id == key_id))
        session.commit()


def test_uploads_are_owned_and_counted_against_a_quota(gateway: Gateway) -> None:
    with get_sessionmaker()() as session:
        first = keys.create_key(session=session, scope="train", name="uploader")
        second = keys.create_key(session=session, scope="train", name="snooper")
    conll = b"EU B-ORG\nrejects O\n\n" * 150  # 3,150 bytes of 5,000
    try:
        stored = gateway.request(
            "POST", "/train/uploads", first.plaintext, files={"file": ("a.conll", conll, "text/plain")}
        )
        assert stored.status_code == 201, stored.text
        over = gateway.request(
            "POST", "/train/uploads", first.plaintext, files={"file": ("b.conll", conll, "text/plain")}
        )
        assert over.status_code == 429 and "NER_TRAIN_UPLOAD_QUOTA_BYTES" in over.text
        reference = str(Path(stored.json()["path"]).relative_to(get_settings().data_roots[0]))
        snooped = gateway.request("POST", "/train", second.plaintext, json={"data": reference})
        assert snooped.status_code == 422 and "no such file" in snooped.text
        mine = gateway.request("POST", "/train", first.plaintext, json={"data": reference})
        assert mine.status_code == 202, mine.text
        with get_sessionmaker()() as session:
            row = session.scalar(select(TrainingUpload).where(TrainingUpload.api_key_id == first.id))
            assert row is not None and row.bytes == len(conll)
            assert row.expires_at > datetime.now(UTC) + timedelta(days=6)
    finally:
        _cleanup_runs(first.id)


def test_queued_runs_per_key_are_capped(gateway: Gateway) -> None:
    with get_sessionmaker()() as session:
        key = keys.create_key(session=session, scope="train", name="eager")
    body = {"data": str(get_settings().conll_dir), "epochs": 1}
    try:
        statuses = [gateway.request("POST", "/train", key.plaintext, json=body).status_code for _ in range(3)]
        assert statuses[:2] == [202, 202], statuses
        refused = gateway.request("POST", "/train", key.plaintext, json=body)
        assert refused.status_code == 429 and "NER_TRAIN_MAX_QUEUED_RUNS" in refused.text
        assert "Retry-After" in refused.headers
        # Another key is not held up by this one.
        assert gateway.request("POST", "/train", gateway.keys.other_train, json=body).status_code == 202
    finally:
        _cleanup_runs(key.id)
        _cleanup_runs(gateway.keys.ids["other_train"])


def test_expired_uploads_are_deleted_by_the_clean_up_schedule(service_env: dict[str, str]) -> None:
    from shared.core.celery_app import celery_app
    from shared.training import service as training

    settings = get_settings()
    folder = settings.uploads_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    (folder / "old.conll").write_text("EU B-ORG\n")
    keep = settings.uploads_dir / uuid.uuid4().hex
    keep.mkdir(parents=True)
    (keep / "new.conll").write_text("EU B-ORG\n")
    now = datetime.now(UTC)
    with get_sessionmaker()() as session:
        session.add(TrainingUpload(path=f"{folder.name}/old.conll", bytes=9, sha256="0" * 64,
                                   expires_at=now - timedelta(minutes=1)))  # fmt: skip
        session.add(TrainingUpload(path=f"{keep.name}/new.conll", bytes=9, sha256="0" * 64,
                                   expires_at=now + timedelta(days=1)))  # fmt: skip
        session.commit()
        assert training.purge_expired_uploads(session=session, settings=settings) >= 1
        remaining = set(session.scalars(select(TrainingUpload.path)))
    assert not folder.exists() and keep.exists()
    assert f"{folder.name}/old.conll" not in remaining and f"{keep.name}/new.conll" in remaining
    schedule = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert "ner.jobs.purge_uploads" in schedule


# --- base models, /readyz and /metrics (issue 19) ---------------------------------------------


def test_only_admins_or_the_allow_list_choose_a_base_model(gateway: Gateway) -> None:
    body = {"data": str(get_settings().conll_dir), "epochs": 1}
    try:
        refused = gateway.request("POST", "/train", "train", json={**body, "base_model": "bigscience/bloom"})
        assert refused.status_code == 403 and "NER_BASE_MODEL_ALLOW" in refused.text
        listed = gateway.request("POST", "/train", "train", json={**body, "base_model": ALLOWED_BASE_MODEL})
        assert listed.status_code == 202, listed.text
        # An admin too names a pinned revision (the size check: tests/training/test_base_model.py).
        pinned = "bigscience/bloom@" + "a" * 40
        admin = gateway.request("POST", "/train", "admin", json={**body, "base_model": pinned})
        assert admin.status_code == 202, admin.text
    finally:
        _cleanup_runs(gateway.keys.ids["train"])
        _cleanup_runs(gateway.keys.ids["admin"])


def test_readyz_without_a_key_names_components_only(gateway: Gateway) -> None:
    public = gateway.get("/readyz")
    assert set(public.json()) == {"status", "failing"}
    assert all(name in ("database", "broker", "model") for name in public.json()["failing"])
    assert "/" not in public.text
    assert "checks" in gateway.get("/readyz", "admin").json()
    assert "checks" not in gateway.get("/readyz", "predict").json()


def test_a_metrics_key_reads_metrics_and_nothing_else(gateway: Gateway) -> None:
    assert gateway.get("/metrics", "metrics").status_code == 200
    assert gateway.get("/metrics", "admin").status_code == 200
    for path in ("/jobs", "/models", "/train"):
        assert gateway.get(path, "metrics").status_code == 403, path


# --- with a model: idempotency, the failed-auth throttle, fairness between keys -----------------


@dataclass
class ModelGateway:
    url: str
    process: ServiceProcess
    predict_key: str  # verified before any attack
    flooding_key: str
    jobs_key: str


@pytest.fixture(scope="module")
def model_gateway(service_env: dict[str, str], tiny_model_dir: Path, log_dir: Path) -> Iterator[ModelGateway]:
    predict_key, _ = _create("predict", "fair predict")
    other_key, _ = _create("predict", "flooding predict")
    jobs_key, _ = _create("jobs", "idempotent jobs")
    env = {
        **service_env,
        "NER_AUTH": "on",
        "NER_MODEL": str(tiny_model_dir),
        "NER_AUTH_FAIL_LIMIT": "5",
        "NER_AUTH_FAIL_WINDOW_S": "60",
        "NER_PREDICT_MAX_CONCURRENT_PER_KEY": "1",
    }
    # Failed checks other tests made from 127.0.0.1 count in the same Redis: start from none.
    client = redis_client(service_env["NER_REDIS_URL"])
    for name in client.scan_iter("ner:authfail:*"):
        client.delete(name)
    proc, url = start_gateway(env, log_dir)
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 120, "the model", proc)
        yield ModelGateway(url, proc, predict_key, other_key, jobs_key)
    finally:
        proc.stop()


def test_the_same_idempotency_key_with_another_body_is_422(model_gateway: ModelGateway) -> None:
    """Row 9: the same key and body replay; another body under the same key is refused."""
    url, auth = model_gateway.url, {"X-API-Key": model_gateway.jobs_key}
    headers = {**auth, "Idempotency-Key": f"trust-{uuid.uuid4()}"}
    body = {"documents": [{"id": "a", "text": "Paris"}]}
    first = httpx.post(f"{url}/jobs", json=body, headers=headers, timeout=30)
    assert first.status_code == 202, first.text
    again = httpx.post(f"{url}/jobs", json=body, headers=headers, timeout=30)
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["job_id"] == first.json()["job_id"]
    other = httpx.post(f"{url}/jobs", json={"documents": [{"id": "a", "text": "Lyon"}]}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.text


def test_failed_key_checks_are_throttled_before_any_scrypt(model_gateway: ModelGateway) -> None:
    """Row 5: wrong secrets for a known prefix get 429 with Retry-After after a few tries (per
    address and per prefix); a key the gateway already verified keeps working meanwhile."""
    url = model_gateway.url
    victim, _ = _create("predict", "victim")
    text = {"text": "Paris"}
    assert (
        httpx.post(f"{url}/predict/", json=text, headers={"X-API-Key": victim}, timeout=30).status_code == 200
    )
    forged = {"X-API-Key": victim[: keys.PREFIX_LEN] + "_" + "A" * 43}
    # The attacker comes from another loopback address, so the rest of this module is not throttled.
    attacker = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=30)
    statuses = []
    with attacker:
        started = time.perf_counter()
        for _ in range(12):
            response = attacker.post(f"{url}/predict/", json=text, headers=forged)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
        elapsed = time.perf_counter() - started
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
        # The address is throttled for any key it has not proved, even a real one.
        fresh, _ = _create("predict", "fresh")
        assert attacker.post(f"{url}/predict/", json=text, headers={"X-API-Key": fresh}).status_code == 429
    # The 7 refused checks cost no scrypt (one takes tens of ms): together far under 7 scrypts'
    # worth on a busy machine.
    assert elapsed < 12 * 0.5, elapsed
    # The verified key still works from its own address, though its prefix is under attack ...
    assert (
        httpx.post(f"{url}/predict/", json=text, headers={"X-API-Key": victim}, timeout=30).status_code == 200
    )
    # ... and a new key from another address is checked normally.
    assert (
        httpx.post(f"{url}/predict/", json=text, headers={"X-API-Key": fresh}, timeout=30).status_code == 200
    )


def test_a_small_request_stays_fast_while_another_key_floods(model_gateway: ModelGateway) -> None:
    """Row 4: one key floods /predict/ from 6 threads; another key's one-sentence requests stay fast.

    The issue's goal is a p99 under 200 ms. These 2 cores are shared with other test runs (load
    average ~9 when this was written), where a single sentence alone takes ~45 ms (p50) and one
    flood request in the engine ~150 ms, so the bounds are relative to the same requests measured
    without the flood just before, with a margin: here, today's code (no per-key cap in flight,
    requests not charged by characters) gave p50 929 ms and p90 1,345 ms; with the limits p50
    152 ms and p90 284 ms. With the key check and the bucket charge on the event loop (before, a
    thread-pool hop per request, the flood's 429s included, and the small requests queued behind
    them), at load average 7-8 in four runs: p50 53-141 ms, p90 111-444 ms, max 175-1,378 ms
    against p50 27-32 ms alone (under py-spy, the thread-pool version p50 215 ms and p90 614 ms,
    this one p50 141 ms and p90 307 ms). On the quiet machine (load average ~1), three runs: p50
    58-68 ms, p90 88-104 ms, max 124-128 ms of 40 each (the goal's 200 ms p99), alone p50 14 ms. The
    spread under load is this machine's: the flood's client threads share its 2 cores and now get their 429s
    several times faster, so they spin harder; the bounds stay where they were.
    Bounded: 40 samples or 25 s, loopback only.
    """
    url = model_gateway.url
    flood_body = {"text": ("Angela Merkel met Emmanuel Macron in Berlin on Tuesday. " * 18)[:1000]}
    small_body = {"text": "Kofi Annan visited Nairobi."}
    stop = threading.Event()
    flood_statuses: list[int] = []

    def flood() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                try:
                    response = client.post(
                        f"{url}/predict/", json=flood_body, headers={"X-API-Key": model_gateway.flooding_key}
                    )
                    flood_statuses.append(response.status_code)
                except httpx.HTTPError:
                    flood_statuses.append(0)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(6)]
    latencies: list[float] = []
    small = {"X-API-Key": model_gateway.predict_key}

    def quantiles(values: list[float]) -> tuple[float, float]:
        ordered = sorted(values)
        return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.9)]

    with httpx.Client(timeout=60) as client:
        for _ in range(3):  # warm: connection, verified-key cache
            client.post(f"{url}/predict/", json=small_body, headers=small)
        alone = []  # the same requests without the flood: what this machine's load allows now
        for _ in range(15):
            started = time.perf_counter()
            client.post(f"{url}/predict/", json=small_body, headers=small)
            alone.append(time.perf_counter() - started)
            time.sleep(0.05)
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)  # the flood is under way
            deadline = time.monotonic() + 25
            while len(latencies) < 40 and time.monotonic() < deadline:
                started = time.perf_counter()
                response = client.post(f"{url}/predict/", json=small_body, headers=small)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert len(latencies) >= 20, len(latencies)
    (p50, p90), (alone_p50, alone_p90) = quantiles(latencies), quantiles(alone)
    measured = (
        f"flooded p50 {p50 * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
        f"alone p50 {alone_p50 * 1000:.0f} ms, p90 {alone_p90 * 1000:.0f} ms, max {max(alone) * 1000:.0f} ms"
    )
    print(measured, dict(Counter(flood_statuses)))  # for the log of a run with -s
    assert 429 in flood_statuses and 200 in flood_statuses, Counter(flood_statuses)  # served, held back
    assert p50 < alone_p50 + 0.35 and p90 < alone_p90 + 0.5, measured


def test_concurrent_first_tries_of_one_idempotency_key_on_sqlite(
    service_env: dict[str, str], tiny_model_dir: Path, log_dir: Path, tmp_path: Path
) -> None:
    """Row 8: 10 identical submissions with one Idempotency-Key at once, on SQLite (no advisory
    lock): one job, ten 202s, never an IntegrityError 500."""
    from shared.core import migrate

    database = f"sqlite:///{tmp_path / 'ner.db'}"
    migrate.upgrade(database)
    env = {
        **service_env,
        "NER_DATABASE_URL": database,
        "NER_STATE_DIR": str(tmp_path / "state"),
        "NER_MODEL": str(tiny_model_dir),
        "NER_SERVE_PREDICT": "false",  # jobs only: no model loaded in this gateway
        "NER_AUTH": "off",
    }
    proc, url = start_gateway(env, log_dir)
    headers = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    body = {"documents": [{"id": str(i), "text": f"Paris number {i}"} for i in range(50)]}
    barrier = threading.Barrier(10)
    answers: list[httpx.Response] = []

    def submit() -> None:
        barrier.wait()
        answers.append(httpx.post(f"{url}/jobs", json=body, headers=headers, timeout=60))

    try:
        threads = [threading.Thread(target=submit) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
    finally:
        proc.stop()
    assert [answer.status_code for answer in answers] == [202] * 10, [a.text for a in answers]
    assert len({answer.json()["job_id"] for answer in answers}) == 1


def test_the_trainer_never_loads_a_local_folder_named_like_a_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 2: a hub id that is also a folder where the trainer runs is refused, quoting nothing."""
    from trainer.data import read_hub

    folder = tmp_path / "owner" / "name"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("secret_header,label\nx,O\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as refused:
        read_hub("hf:owner/name", cache_dir=tmp_path / "cache")
    assert "hf:owner/name" in str(refused.value) and "secret_header" not in str(refused.value)


def test_training_starts_and_uploads_are_rate_limited(gateway: Gateway) -> None:
    """Row 6: rapid POST /train/uploads from one key meet its rate limit (429), not only quotas."""
    with get_sessionmaker()() as session:
        key = keys.create_key(session=session, scope="train", name="rapid", rate_limit_per_minute=2)
    small = {"file": ("r.conll", b"EU B-ORG\n\n", "text/plain")}
    statuses = [
        gateway.request("POST", "/train/uploads", key.plaintext, files=small).status_code for _ in range(3)
    ]
    assert statuses == [201, 201, 429], statuses


def test_the_openapi_document_lists_the_guards_answers(gateway: Gateway) -> None:
    """Every operation with a body can answer 413, every secured one 429 (the failed-auth throttle)."""
    for method, path, op in _operations(gateway):
        responses = op.get("responses", {})
        if "requestBody" in op:
            assert "413" in responses, (method, path)
        if op.get("security"):
            assert "429" in responses and "Retry-After" in responses["429"]["headers"], (method, path)
