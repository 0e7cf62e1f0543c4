"""Operations: request ids, JSON logs, Celery headers, Prometheus metrics (gateway and workers)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.metrics import QueueDepthCollector, observe_batch_size
from shared.cli.embedded_redis import free_port
from shared.core import metrics as worker_metrics_module
from shared.core.celery_app import celery_app
from shared.core.celery_signals import REQUEST_ID_HEADER
from shared.core.logging import JsonFormatter, get_request_id, redact, request_id_var, task_var
from shared.core.redis import redis_client
from tests.support.auth import settings_env
from tests.support.processes import REPO_ROOT, ServiceProcess, ner, wait_until


@celery_app.task(name="ner.test.echo_context")
def echo_context() -> dict[str, object]:
    """What a task sees of the request that caused it (run eagerly by a test)."""
    return {"request_id": get_request_id(), "task": task_var.get()}


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text).get((name, frozenset(labels.items())), 0.0)


def _app() -> TestClient:
    """The real app (lifespan not started: no model) with two probe routes."""
    app = create_app()

    @app.get("/_probe/echo/{item}")
    def echo(item: str, request: Request) -> dict[str, object]:
        return {"header": request.headers.get("x-request-id"), "context": get_request_id()}

    @app.get("/_probe/boom")
    def boom() -> None:
        raise RuntimeError("kaput")

    return TestClient(app)


@pytest.fixture
def client(service_env: dict[str, str]) -> Iterator[TestClient]:
    yield _app()


# --- request ids ----------------------------------------------------------------------------


def test_request_id_is_made_or_kept_and_returned(client: TestClient) -> None:
    made = client.get("/_probe/echo/a")
    rid = made.headers["X-Request-ID"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    # The route (and whatever it stores or queues) sees the same id.
    assert made.json() == {"header": rid, "context": rid}
    assert client.get("/_probe/echo/a").headers["X-Request-ID"] != rid

    kept = client.get("/_probe/echo/a", headers={"X-Request-ID": "batch-7:retry.2"})
    assert kept.headers["X-Request-ID"] == "batch-7:retry.2"
    assert kept.json()["header"] == "batch-7:retry.2"


@pytest.mark.parametrize("bad", ["x" * 101, "a b", "<script>", "a/../b", "id;drop", '"quoted"', "\t"])
def test_unsafe_request_ids_are_replaced(client: TestClient, bad: str) -> None:
    response = client.get("/_probe/echo/a", headers={"X-Request-ID": bad})
    rid = response.headers["X-Request-ID"]
    assert rid != bad and len(rid) == 32
    assert response.json() == {"header": rid, "context": rid}


def test_errors_carry_the_request_id_too(client: TestClient) -> None:
    assert client.get("/nowhere", headers={"X-Request-ID": "r-404"}).headers["X-Request-ID"] == "r-404"
    crash = client.get("/_probe/boom", headers={"X-Request-ID": "r-500"})
    assert crash.status_code == 500
    assert crash.headers["X-Request-ID"] == "r-500"
    assert crash.json() == {"detail": "internal server error", "request_id": "r-500"}
    assert "kaput" not in crash.text


# --- JSON logs ------------------------------------------------------------------------------


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("gateway"))
    logger = logging.getLogger("ner.access")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_access_log_is_json_with_request_id_and_route_template(client: TestClient, access_lines) -> None:  # type: ignore[no-untyped-def]
    secret_key = "ner_0123abcd_" + "s" * 43
    client.get("/_probe/echo/item-42?q=1", headers={"X-Request-ID": "log-check", "X-API-Key": secret_key})
    lines = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    entry = next(line for line in lines if line.get("request_id") == "log-check")
    assert entry["component"] == "gateway" and entry["level"] == "INFO"
    assert entry["route"] == "/_probe/echo/{item}" and entry["path"] == "/_probe/echo/item-42"
    assert entry["status"] == 200 and entry["method"] == "GET" and entry["duration_ms"] >= 0
    assert secret_key not in access_lines.getvalue()


def test_formatter_writes_context_extras_and_redacts_keys() -> None:
    formatter = JsonFormatter("worker")
    key = "ner_89abcdef_" + "Z" * 43
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "got %s", (key,), None)
    record.job_id = "j-1"
    token, task_token = request_id_var.set("rid-9"), task_var.set(("ner.jobs.process_chunk", "t-1"))
    try:
        entry = json.loads(formatter.format(record))
    finally:
        task_var.reset(task_token)
        request_id_var.reset(token)
    assert entry["request_id"] == "rid-9" and entry["job_id"] == "j-1" and entry["component"] == "worker"
    assert entry["task"] == "ner.jobs.process_chunk" and entry["task_id"] == "t-1"
    assert key not in entry["msg"] and entry["msg"] == "got ner_89abcdef_[redacted]"
    assert redact(f"Authorization: Bearer {key}") == "Authorization: Bearer ner_89abcdef_[redacted]"


# --- request ids into Celery tasks ----------------------------------------------------------


def test_published_tasks_carry_the_request_id(service_env: dict[str, str]) -> None:
    queue = f"test-ops-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    token = request_id_var.set("req-into-celery")
    try:
        celery_app.send_task("ner.test.echo_context", queue=queue)
    finally:
        request_id_var.reset(token)
    celery_app.send_task("ner.test.echo_context", queue=queue)  # outside a request: no header
    redis = redis_client(service_env["NER_REDIS_URL"])
    messages = [json.loads(raw) for raw in redis.lrange(queue, 0, -1)]
    redis.delete(queue)
    stamped = [m["headers"].get(REQUEST_ID_HEADER) for m in messages]
    assert sorted(stamped, key=str) == sorted(["req-into-celery", None], key=str)


def test_a_task_runs_with_the_request_id_of_its_message() -> None:
    result = echo_context.apply(headers={REQUEST_ID_HEADER: "rid-from-header"}).get()
    assert result["request_id"] == "rid-from-header"
    assert result["task"][0] == "ner.test.echo_context"
    # Nothing leaks into the next task or the caller.
    assert echo_context.apply().get()["request_id"] is None
    assert get_request_id() is None


# --- Prometheus: the gateway ----------------------------------------------------------------


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    before = client.get("/metrics").text
    for _ in range(2):
        client.get("/healthz")
    job_id = uuid.uuid4()
    client.get(f"/jobs/{job_id}")
    client.get(f"/no-such-page-{job_id}")
    after = client.get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    assert (
        _value(text, "ner_http_requests_total", **labels)
        - _value(before, "ner_http_requests_total", **labels)
        == 2
    )
    assert _value(text, "ner_http_request_duration_seconds_count", **labels) >= 2
    assert _value(text, "ner_http_requests_total", method="GET", route="/jobs/{job_id}", status="404") >= 1
    assert _value(text, "ner_http_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert str(job_id) not in text  # raw paths never become labels


def test_metrics_show_queue_depth_and_batch_sizes(client: TestClient, service_env: dict[str, str]) -> None:
    observe_batch_size(7)
    text = client.get("/metrics").text
    assert (
        _value(text, "ner_predict_batch_size_count") >= 1 and _value(text, "ner_predict_batch_size_sum") >= 7
    )
    depths = {labels: value for (name, labels), value in _samples(text).items() if name == "ner_queue_depth"}
    assert {dict(labels)["queue"] for labels in depths} == {
        "inference",
        "inference.recovery",
        "training",
        "shadow",
    }

    queue = f"test-depth-{uuid.uuid4().hex[:8]}"
    redis = redis_client(service_env["NER_REDIS_URL"])
    redis.rpush(queue, "a", "b", "c")
    redis.rpush(f"{queue}\x06\x163", "d", "e")  # a prioritised sibling list, as kombu names it
    try:
        (family,) = QueueDepthCollector(service_env["NER_REDIS_URL"], [queue]).collect()
        assert [(s.labels, s.value) for s in family.samples] == [({"queue": queue}, 5)]
    finally:
        redis.delete(queue, f"{queue}\x06\x163")
    # Without Redis the scrape still answers, just without a depth.
    (family,) = QueueDepthCollector(f"redis://127.0.0.1:{free_port()}/0", [queue]).collect()
    assert family.samples == []


@pytest.mark.slow
def test_metrics_name_the_served_model_and_measure_real_batches(
    service_env: dict[str, str], tiny_model_dir: Path
) -> None:
    with settings_env({"NER_MODEL": str(tiny_model_dir)}), TestClient(create_app()) as http:
        wait_until(lambda: http.get("/readyz").status_code == 200, 120, "the model to load")
        before = http.get("/metrics").text
        response = http.post("/predict", json={"text": "Angela Merkel visited Paris."})
        assert response.status_code == 200, response.text
        text = http.get("/metrics").text
    info = [labels for (name, labels), _ in _samples(text).items() if name == "ner_model_info"]
    assert len(info) == 1 and ("source", "NER_MODEL") in info[0] and ("ref", str(tiny_model_dir)) in info[0]
    assert _value(text, "ner_predict_batch_size_count") == _value(before, "ner_predict_batch_size_count") + 1


# --- Prometheus: the workers ----------------------------------------------------------------


def test_instrumented_predict_counts_documents_and_model_time() -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        sample("ner_worker_documents_total", outcome="done"),
        sample("ner_worker_documents_total", outcome="failed"),
        sample("ner_worker_inference_seconds_count"),
    )
    worker_metrics_module.worker_metrics()  # created in this process's (single-process) mode

    def broken(texts: list[str]) -> list[object]:
        raise ValueError("bad input")

    good = worker_metrics_module.instrument_predict(lambda texts: [[] for _ in texts])
    bad = worker_metrics_module.instrument_predict(broken)
    assert good(["a", "b", "c"]) == [[], [], []]
    for texts in (["x", "y"], ["x"]):  # a failed batch counts nothing; a failed single text counts
        with pytest.raises(ValueError):
            bad(texts)
    after = (
        sample("ner_worker_documents_total", outcome="done"),
        sample("ner_worker_documents_total", outcome="failed"),
        sample("ner_worker_inference_seconds_count"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 3]


_RECORDER = textwrap.dedent(
    """
    import os, sys, time
    from shared.core.config import get_settings
    from shared.core import metrics
    settings = get_settings()
    metrics.enable_multiprocess(settings)
    metrics.record_documents(done=int(sys.argv[1]), failed=int(sys.argv[2]))
    metrics.observe_inference(0.25)
    if metrics.serve_metrics_port(settings):
        print("serving", flush=True)
        time.sleep(60)
    """
)


def test_worker_processes_add_up_in_one_folder_and_serve_it(
    tmp_path: Path, service_env: dict[str, str]
) -> None:
    folder = tmp_path / "metrics"
    port = free_port()
    env = {**service_env, "NER_METRICS_DIR": str(folder), "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", _RECORDER, "3", "0"], env=env, check=True, cwd=REPO_ROOT)
    server = subprocess.Popen(
        [sys.executable, "-c", _RECORDER, "2", "1"],
        env={**env, "NER_METRICS_PORT": str(port)},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"serving"
        served = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.kill()
        server.wait()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    from prometheus_client import generate_latest

    for text in (served, generate_latest(registry).decode()):
        assert _value(text, "ner_worker_documents_total", outcome="done") == 5
        assert _value(text, "ner_worker_documents_total", outcome="failed") == 1
        assert _value(text, "ner_worker_inference_seconds_count") == 2
    assert len(list(folder.glob("*.db"))) >= 2  # one file per process and kind of metric


def test_worker_metrics_server_is_off_by_default(service_env: dict[str, str]) -> None:
    from shared.core.config import get_settings

    assert get_settings().metrics_port == 0
    assert worker_metrics_module.serve_metrics_port(get_settings()) is None


# --- done when: gateway, worker and Flower as real processes ----------------------------------


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_job_tasks_show_in_flower_and_metrics_with_request_ids_and_no_secrets(
    auth_on: dict[str, str], api_key, tiny_model_dir: Path, log_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    flower_auth = ("ops", f"pw-{uuid.uuid4().hex[:8]}")
    env = {
        **auth_on,
        "NER_MODEL": str(tiny_model_dir),
        "NER_METRICS_DIR": str(tmp_path / "metrics"),  # this test's processes only
        "NER_FLOWER_USER": flower_auth[0],
        "NER_FLOWER_PASSWORD": flower_auth[1],
        # The first Flower's periodic save is a day away: only its clean stop can save its history.
        "NER_FLOWER_STATE_SAVE_SECONDS": "86400",
    }
    flower_db = Path(env["NER_STATE_DIR"]) / "flower.db"
    jobs_key, admin_key = api_key("jobs"), api_key("admin")
    marker = f"Zanzibar{uuid.uuid4().hex[:6]}"  # document text that must stay out of Flower and logs
    request_id = f"e2e-{uuid.uuid4().hex[:12]}"
    processes: list[ServiceProcess] = []
    try:
        # Started together (each takes seconds to import and load), then waited for.
        flower_port, gateway_port = free_port(), free_port()
        flower_url, base = f"http://127.0.0.1:{flower_port}", f"http://127.0.0.1:{gateway_port}"
        flower = ServiceProcess("flower", ner("flower", "--port", str(flower_port)), env, log_dir)
        worker = ServiceProcess("worker", ner("worker"), env, log_dir)
        gateway = ServiceProcess("gateway", ner("serve", "--port", str(gateway_port)), env, log_dir)
        processes += [flower, worker, gateway]
        wait_until(lambda: _answers(f"{flower_url}/healthcheck"), 120, "Flower's /healthcheck", flower)
        wait_until(lambda: " ready." in worker.log(), 120, "the worker", worker)
        wait_until(lambda: _answers(f"{base}/readyz"), 120, "the gateway and its model", gateway)

        def submit_and_finish(count: int, rid: str | None = None) -> str:
            """Submit a job of ``count`` documents (with request id ``rid``) and wait for its end."""
            documents = [
                {"id": f"d{i}", "text": f"{marker} met Angela Merkel in Berlin ({i})."} for i in range(count)
            ]
            headers = {"X-API-Key": jobs_key, **({"X-Request-ID": rid} if rid else {})}
            submitted = httpx.post(f"{base}/jobs", json={"documents": documents}, headers=headers, timeout=30)
            assert submitted.status_code == 202, submitted.text
            assert rid is None or submitted.headers["X-Request-ID"] == rid
            job_id = submitted.json()["job_id"]

            def finished() -> bool:
                view = httpx.get(f"{base}/jobs/{job_id}", headers={"X-API-Key": jobs_key}, timeout=10).json()
                return view["status"] in ("succeeded", "failed")

            wait_until(finished, 120, "the job to finish", gateway)
            return job_id

        job_id = submit_and_finish(3, request_id)

        # Flower: the job's tasks, readable, without document text; closed without the password.
        assert httpx.get(f"{flower_url}/api/tasks", timeout=10).status_code == 401

        def job_tasks(url: str, job: str) -> dict[str, tuple[object, object, object]]:
            """The job's finished tasks that Flower at ``url`` lists: id -> (name, args, state)."""
            tasks = httpx.get(f"{url}/api/tasks", auth=flower_auth, timeout=10).json()
            return {
                t["uuid"]: (t["name"], t["args"], t["state"])
                for t in tasks.values()
                if job in str(t.get("args")) and t.get("state") == "SUCCESS"
            }

        wait_until(lambda: bool(job_tasks(flower_url, job_id)), 30, "Flower to list the job's tasks", flower)
        tasks_json = httpx.get(f"{flower_url}/api/tasks", auth=flower_auth, timeout=10).text
        first_tasks = job_tasks(flower_url, job_id)
        assert {name for name, _, _ in first_tasks.values()} == {"ner.jobs.process_chunk"}
        assert marker not in tasks_json and jobs_key not in tasks_json

        # Flower's history survives a restart. A clean stop (SIGTERM, as Compose and Kubernetes
        # send) saves it: the same tasks, names and arguments are listed by the next Flower.
        flower.stop()
        assert flower.process.returncode == 0, flower.log()[-3000:]

        def restart_flower(save_seconds: str) -> tuple[ServiceProcess, str]:
            port = free_port()
            argv = ner("flower", "--port", str(port))
            proc = ServiceProcess(
                "flower", argv, {**env, "NER_FLOWER_STATE_SAVE_SECONDS": save_seconds}, log_dir
            )
            processes.append(proc)
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _answers(f"{url}/healthcheck"), 120, "Flower's /healthcheck", proc)
            return proc, url

        flower, flower_url = restart_flower("0.5")
        assert job_tasks(flower_url, job_id) == first_tasks

        # A killed Flower (SIGKILL: no chance to save) loses at most NER_FLOWER_STATE_SAVE_SECONDS.
        second_job = submit_and_finish(1)
        wait_until(
            lambda: bool(job_tasks(flower_url, second_job)), 30, "Flower to list the second job", flower
        )
        second_tasks = job_tasks(flower_url, second_job)
        seen_at = time.time()

        def saved_since_seen() -> bool:
            files = [f for f in flower_db.parent.glob(flower_db.name + "*") if ".tmp" not in f.name]
            return any(f.stat().st_mtime > seen_at for f in files)

        wait_until(saved_since_seen, 10, "Flower's periodic save", flower)
        flower.kill()
        flower, flower_url = restart_flower("60")
        assert job_tasks(flower_url, job_id) == first_tasks
        assert job_tasks(flower_url, second_job) == second_tasks

        # /metrics: the gateway's own counters and, from the shared folder, the worker's.
        scrape = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
        assert scrape.status_code == 200
        text = scrape.text
        assert _value(text, "ner_http_requests_total", method="POST", route="/jobs", status="202") >= 1
        assert _value(text, "ner_worker_documents_total", outcome="done") >= 3
        assert _value(text, "ner_worker_inference_seconds_count") >= 1
        assert _value(text, "ner_worker_tasks_total", task="ner.jobs.process_chunk", outcome="success") >= 1
        assert _value(text, "ner_queue_depth", queue="inference") == 0
        assert httpx.get(f"{base}/metrics", headers={"X-API-Key": jobs_key}).status_code == 403
    finally:
        for proc in reversed(processes):
            proc.stop()

    for proc in processes:
        text = proc.log()
        for secret in (jobs_key, admin_key, flower_auth[1]):
            assert secret not in text, f"a secret in the {proc.name} log"
        if proc.name == "flower":
            assert marker not in text
    logs = {proc.name: proc.log() for proc in processes if proc.name != "flower"}
    # The request id travels from the gateway's access log into the worker's task log lines.
    gateway_lines = _json_lines(logs["gateway"])
    assert any(e.get("request_id") == request_id and e.get("route") == "/jobs" for e in gateway_lines)
    worker_lines = _json_lines(logs["worker"])
    stamped = [e for e in worker_lines if e.get("request_id") == request_id]
    assert stamped and all(e["task"] == "ner.jobs.process_chunk" for e in stamped)
    assert marker not in logs["worker"]


def _json_lines(text: str) -> list[dict[str, object]]:
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


# --- Flower is never open beyond this machine (trust boundaries, row 7) -----------------------


@pytest.mark.parametrize("command", ["flower", "up"])
def test_flower_refuses_to_start_without_a_password_off_loopback(
    command: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    argv = ner(command)
    env = {
        **service_env,
        "NER_HOST": "0.0.0.0",
        "NER_FLOWER_PASSWORD": "",
        "NER_FLOWER_PORT": str(free_port()),
        "NER_PORT": str(free_port()),
        "NER_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        argv, env={**os.environ, **env}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "NER_FLOWER_PASSWORD" in done.stderr and "loopback" in done.stderr
    assert "gateway on" not in done.stdout  # ner up started nothing


def test_flower_on_loopback_or_with_a_password_is_allowed() -> None:
    from shared.cli.main import flower_refusal
    from shared.core.config import Settings

    assert flower_refusal(Settings(host="127.0.0.1", flower_password=None)) is None
    assert flower_refusal(Settings(host="::1", flower_password=None)) is None
    assert flower_refusal(Settings(host="localhost", flower_password=None)) is None
    assert flower_refusal(Settings(host="0.0.0.0", flower_password="s3cret")) is None
    assert flower_refusal(Settings(host="0.0.0.0", flower_password=None)) is not None
    assert flower_refusal(Settings(host="ner.example", flower_password=None)) is not None
