"""Separate hosts, really separate: gateway, worker and trainer in network namespaces of their own,
sharing no folder, joined only by the test's PostgreSQL, Redis, broker and artifact store.

Through the gateway: upload data, train a version (the trainer fetches the uploads from the store),
see it gated and activated, a bulk job processed on the worker host with that version (fetched
from the store into the worker's own cache) and /predict/ on the gateway host answering with it.
Then the worker host's process is killed mid-job and a worker on a fourth host finishes it: every
document has exactly one result. Once with Redis as the broker and S3 (moto's server) as the
store, once with RabbitMQ and the database store.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.core import migrate
from shared.core.config import get_settings
from shared.core.db import make_engine
from shared.core.tables import ChunkStatus, Job, JobChunk, JobResult, JobStatus
from tests.scaleout.conftest import S3_KEY, start_s3
from tests.scaleout.hosts import (
    Network,
    TcpRelay,
    free_port_on,
    host_env,
    host_process,
    netns_unavailable,
    private_postgres,
    private_redis,
    rabbitmq_unavailable,
    rabbitmq_vhost,
    wait_for,
)
from tests.support.conll_subset import conll_subset
from tests.support.processes import ServiceProcess
from trainer.conll import read_conll

pytestmark = pytest.mark.slow

SENTENCE = "Angela Merkel met Emmanuel Macron in Paris."


@dataclass(frozen=True)
class Flow:
    broker: str  # redis | amqp
    store: str  # s3 | postgresql


FLOWS = [Flow("redis", "s3"), Flow("amqp", "postgresql")]


@pytest.fixture
def network() -> Iterator[Network]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Network().open()
    try:
        yield net
    finally:
        net.close()


@dataclass
class Cluster:
    network: Network
    database_url: str
    env: dict[str, dict[str, str]]  # host -> environment
    root: Path
    log_dir: Path
    processes: list[ServiceProcess]
    gateway_url: str = ""

    def start(self, host: str, name: str, args: list[str]) -> ServiceProcess:
        process = host_process(self.network, host, name, args, self.env[host], self.log_dir)
        self.processes.append(process)
        return process


def _base_env(flow: Flow, stack: ExitStack, network: Network, log_dir: Path) -> tuple[str, dict[str, str]]:
    bridge = network.gateway_ip
    database = stack.enter_context(private_postgres(bridge))
    migrate.upgrade(database)
    redis_url = stack.enter_context(private_redis(bridge))
    env = {
        "NER_DATABASE_URL": database,
        "NER_REDIS_URL": redis_url,
        "NER_AUTH": "off",
        "NER_DEFAULT_MODEL": "none",
        "NER_MODEL_POLL_SECONDS": "0.5",
        "NER_LOG_FORMAT": "text",
        # Small chunks, a quick watchdog: a killed worker's chunk comes back within seconds.
        "NER_CHUNK_MAX_DOCUMENTS": "2",
        "NER_JOB_HEARTBEAT_S": "1",
        "NER_JOB_STALL_TIMEOUT_S": "6",
        "NER_JOB_WATCHDOG_INTERVAL_S": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    if flow.store == "s3":
        server = start_s3(bridge, log_dir / f"moto-hosts-{time.monotonic_ns()}.log")
        stack.callback(server.process.wait, 10)
        stack.callback(server.process.terminate)
        bucket = f"ner-{uuid.uuid4().hex[:10]}"
        server.create_bucket(bucket)
        env |= {
            "NER_ARTIFACTS_URL": f"s3://{bucket}/cluster", "NER_S3_ENDPOINT_URL": server.endpoint,
            "NER_S3_REGION": "us-east-1", "NER_S3_ACCESS_KEY_ID": S3_KEY, "NER_S3_SECRET_ACCESS_KEY": S3_KEY,
        }  # fmt: skip
    else:
        env["NER_ARTIFACTS_URL"] = "postgresql"
    if flow.broker == "amqp":
        reason = rabbitmq_unavailable()
        if reason:
            pytest.skip(reason)
        vhost = stack.enter_context(rabbitmq_vhost())
        relay = TcpRelay((bridge, 0), ("127.0.0.1", 5672))
        stack.callback(relay.close)
        env["NER_BROKER_URL"] = f"amqp://guest:guest@{bridge}:{relay.port}/{vhost}"
    return database, env


def _http() -> httpx.Client:
    return httpx.Client(timeout=60, trust_env=False)  # no proxy between the test and its hosts


def _ready(process: ServiceProcess) -> bool:
    return " ready." in process.log()


def _documents(count: int, sentences_each: int) -> list[dict[str, str]]:
    sentences = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=2000)]
    sentences = [s for s in sentences if len(s) > 40]
    return [
        {"id": f"d{i}", "text": " ".join(sentences[i * sentences_each : (i + 1) * sentences_each])}
        for i in range(count)
    ]


def _results(session: Session, job_id: uuid.UUID) -> tuple[int, int, set[int | None]]:
    rows, distinct = session.execute(
        select(func.count(), func.count(func.distinct(JobResult.seq))).where(JobResult.job_id == job_id)
    ).one()
    versions = set(
        session.scalars(select(JobResult.model_version).where(JobResult.job_id == job_id).distinct())
    )
    return rows, distinct, versions


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f"{f.broker}-{f.store}")
def test_hosts_that_share_no_disk_train_serve_and_survive_a_killed_worker(
    flow: Flow, network: Network, tmp_path: Path, log_dir: Path
) -> None:
    with ExitStack() as stack:
        database, base = _base_env(flow, stack, network, log_dir)
        for host in ("gateway", "worker", "trainer", "rescuer"):
            network.add_host(host)
        env = {host: host_env(base, tmp_path, host) for host in network.hosts}
        gate_file = Path(env["trainer"]["NER_DATA_ROOTS"]) / "gate.conll"
        env["trainer"] |= {"NER_GATE_DATA": str(gate_file), "NER_GATE_PROMOTE_FIRST": "true"}
        cluster = Cluster(network, database, env, tmp_path, log_dir, [])
        stack.callback(lambda: [p.stop() for p in cluster.processes])
        engine = make_engine(database)
        stack.callback(engine.dispose)
        http = stack.enter_context(_http())

        gateway_ip = network.hosts["gateway"]
        port = free_port_on("127.0.0.1")
        gateway = cluster.start("gateway", "serve", ["serve", "--host", gateway_ip, "--port", str(port)])
        worker = cluster.start("worker", "worker", ["worker"])
        trainer = cluster.start("trainer", "trainer", ["trainer"])
        url = f"http://{gateway_ip}:{port}"

        def healthy() -> bool:
            try:
                return http.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 180, "the gateway host", gateway)
        wait_for(lambda: _ready(worker) and _ready(trainer), 180, "worker and trainer hosts", worker, trainer)

        # The client's data goes through the gateway; the operator's gate set is the trainer's own file.
        client_data = conll_subset(
            get_settings().conll_dir, tmp_path / "client", train=64, validation=16, test=16
        )
        gate_file.write_text((client_data / "dev.conll").read_text())
        gateway_root = Path(env["gateway"]["NER_DATA_ROOTS"])
        refs = {}
        for split, name in (("train", "train.conll"), ("validation", "dev.conll"), ("test", "test.conll")):
            with (client_data / name).open("rb") as handle:
                reply = http.post(f"{url}/train/uploads", files={"file": (name, handle)})
            assert reply.status_code == 201, reply.text
            refs[split] = str(Path(reply.json()["path"]).relative_to(gateway_root))

        body = {"data": refs, "epochs": 1, "batch_size": 16, "max_length": 32, "learning_rate": 3e-4}
        reply = http.post(f"{url}/train", json=body)
        assert reply.status_code == 202, reply.text
        run_id = reply.json()["run_id"]
        run: dict = {}

        def trained() -> bool:
            run.update(http.get(f"{url}/train/{run_id}").json())
            return run["status"] in ("succeeded", "failed", "cancelled")

        wait_for(trained, 600, "the training run", trainer, gateway)
        assert run["status"] == "succeeded", run
        version = run["model_version"]
        assert run["promoted"] is True, run
        detail = http.get(f"{url}/models/{version}").json()
        assert detail["status"] == "active" and detail["gate"]["decision"] == "promoted", detail
        # The registry names an object of the store, never a folder of the trainer's.
        assert detail["path"].startswith("s3://" if flow.store == "s3" else "postgresql:"), detail["path"]
        assert not (Path(env["trainer"]["NER_ARTIFACTS_DIR"]) / f"v{version}").exists()

        # /predict/ on the gateway host answers with the new version (fetched in the background).
        answered: dict = {}

        def predicts_with_version() -> bool:
            reply = http.post(f"{url}/predict/", json={"text": SENTENCE})
            answered.update(reply.json() if reply.status_code == 200 else {"status": reply.status_code})
            return answered.get("model_version") == version

        wait_for(predicts_with_version, 180, f"/predict/ with version {version}", gateway)
        for entity in answered["entities"]:
            assert SENTENCE[entity["start"] : entity["end"]] == entity["word"]
        assert "fetched v" in gateway.log() and "from the artifact store" in gateway.log()

        # A bulk job runs on the worker host, with that version, fetched into the worker's cache.
        reply = http.post(f"{url}/jobs", json={"documents": _documents(6, 2)})
        assert reply.status_code == 202, reply.text
        job_id = uuid.UUID(reply.json()["job_id"])

        def job_status() -> JobStatus:
            with Session(engine) as session:
                return session.get(Job, job_id).status  # type: ignore[union-attr]

        wait_for(lambda: job_status() == JobStatus.succeeded, 300, "the first job", worker)
        with Session(engine) as session:
            job = session.get(Job, job_id)
            assert job is not None and job.model_version == version
            assert _results(session, job_id) == (6, 6, {version})
        worker_cache = Path(env["worker"]["NER_STATE_DIR"]) / "cache" / "artifacts"
        assert any(p.is_dir() and len(p.name) == 64 for p in worker_cache.iterdir())
        for host in ("gateway", "worker", "trainer"):  # no host holds a version folder of its own
            assert not list((Path(env[host]["NER_STATE_DIR"]) / "models").glob("v*"))

        # The worker host's process is killed mid-job; a worker on a fourth host finishes it.
        reply = http.post(f"{url}/jobs", json={"documents": _documents(16, 5)})
        assert reply.status_code == 202, reply.text
        job_id = uuid.UUID(reply.json()["job_id"])

        def chunks() -> list[ChunkStatus]:
            with Session(engine) as session:
                return list(session.scalars(select(JobChunk.status).where(JobChunk.job_id == job_id)))

        wait_for(lambda: ChunkStatus.done in chunks(), 180, "a first chunk of the second job", worker)
        assert ChunkStatus.queued in chunks() or ChunkStatus.running in chunks()
        worker.kill(signal.SIGKILL)  # the whole process group: main process and pool child
        rescuer = cluster.start("rescuer", "worker", ["worker"])
        wait_for(lambda: job_status() == JobStatus.succeeded, 300, "the job after the kill", rescuer, gateway)
        with Session(engine) as session:
            job = session.get(Job, job_id)
            assert job is not None
            rows, distinct, versions = _results(session, job_id)
            assert (rows, distinct, job.done, job.failed) == (job.total, job.total, job.total, 0)
            assert versions == {version} and job.total == 16
        rescued = list((Path(env["rescuer"]["NER_STATE_DIR"]) / "cache" / "artifacts").iterdir())
        assert any(p.is_dir() and len(p.name) == 64 for p in rescued)
