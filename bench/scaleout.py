"""Scale-out part of ``make bench-jobs`` (issue 17): worker hosts that share no disk.

Hosts are network namespaces on a bridge (tests/scaleout/hosts.py; needs root and ``ip netns``);
PostgreSQL, Redis and an S3 server (moto's) of the run's own listen on the bridge, and model
versions travel only through the artifact store. Measured:

1. documents/s of one bulk job on one worker host, then on two (the same job size, one process each);
2. the time from an activation request (``POST /models/{v}/activate``) to the first ``/predict/``
   answered by that version, on a gateway host that had to fetch it from the store.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.orm import Session

from shared.core import migrate
from shared.core.config import Settings
from shared.core.db import make_engine
from shared.registry.publish import Candidate, publish_active_as, publish_version
from tests.scaleout.conftest import S3_KEY, start_s3
from tests.scaleout.hosts import (
    Network,
    free_port_on,
    host_env,
    host_process,
    netns_unavailable,
    private_postgres,
    private_redis,
    wait_for,
)


@dataclass
class ScaleOut:
    documents: int
    one_worker_s: float
    two_workers_s: float
    activation_to_answer_s: float
    activation_request_s: float

    @property
    def one_per_s(self) -> float:
        return self.documents / self.one_worker_s

    @property
    def two_per_s(self) -> float:
        return self.documents / self.two_workers_s


def _card(folder: Path, version: int) -> None:
    (folder / "README.md").write_text(f"# benchmark version {version}\n")  # one manifest per version


def _candidate(model: Path) -> Candidate:
    return Candidate(
        model_dir=model, base_model="", data_hash="", data_ref={"bench": "scaleout"}, params={}, metrics={},
        labels=[], val_f1=None, test_f1=None, write_extras=_card,
    )  # fmt: skip


def _job_seconds(http: httpx.Client, url: str, documents: list[str], *processes) -> float:  # type: ignore[no-untyped-def]
    body = {"documents": [{"id": f"d{i}", "text": text} for i, text in enumerate(documents)]}
    started = time.monotonic()
    reply = http.post(f"{url}/jobs", json=body)
    reply.raise_for_status()
    job = reply.json()["job_id"]
    wait_for(
        lambda: http.get(f"{url}/jobs/{job}").json()["status"] == "succeeded", 1800, "the job", *processes
    )
    return time.monotonic() - started


def run_scaleout(model: Path, documents: list[str], root: Path, log_dir: Path) -> ScaleOut | None:
    """The measurements above; None (with the reason printed) where namespaces are not permitted."""
    reason = netns_unavailable()
    if reason:
        print(f"scale-out run skipped: {reason}", flush=True)
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    network = Network().open()
    with ExitStack() as stack:
        stack.callback(network.close)
        bridge = network.gateway_ip
        database = stack.enter_context(private_postgres(bridge))
        migrate.upgrade(database)
        redis_url = stack.enter_context(private_redis(bridge))
        server = start_s3(bridge, log_dir / f"moto-bench-{time.monotonic_ns()}.log")
        stack.callback(server.process.terminate)
        bucket = f"ner-bench-{uuid.uuid4().hex[:8]}"
        server.create_bucket(bucket)
        base = {
            "NER_DATABASE_URL": database, "NER_REDIS_URL": redis_url, "NER_AUTH": "off",
            "NER_DEFAULT_MODEL": "none", "NER_LOG_LEVEL": "INFO", "NER_MODEL_POLL_SECONDS": "0.5",
            "NER_ARTIFACTS_URL": f"s3://{bucket}/bench", "NER_S3_ENDPOINT_URL": server.endpoint,
            "NER_S3_REGION": "us-east-1", "NER_S3_ACCESS_KEY_ID": S3_KEY, "NER_S3_SECRET_ACCESS_KEY": S3_KEY,
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            # Chunks of 32: a job is many tasks, so two worker hosts can share it.
            "NER_CHUNK_MAX_DOCUMENTS": "32",
        }  # fmt: skip
        publisher = Settings(
            **{k[4:].lower(): v for k, v in base.items() if k.startswith("NER_")},
            state_dir=root / "publisher",
        )
        engine = make_engine(database)
        stack.callback(engine.dispose)
        with Session(engine, expire_on_commit=False) as session:
            publish_active_as(
                session=session, artifacts_dir=publisher.artifacts_dir, candidate=_candidate(model),
                version=1, settings=publisher,
            )  # fmt: skip
        for host in ("gateway", "worker1", "worker2"):
            network.add_host(host)
        processes = []
        stack.callback(lambda: [p.stop() for p in processes])
        gateway_ip, port = network.hosts["gateway"], free_port_on("127.0.0.1")
        env = {host: host_env(base, root, host) for host in network.hosts}
        gateway = host_process(
            network,
            "gateway",
            "serve",
            ["serve", "--host", gateway_ip, "--port", str(port)],
            env["gateway"],
            log_dir,
        )
        processes.append(gateway)
        url = f"http://{gateway_ip}:{port}"
        http = stack.enter_context(httpx.Client(timeout=120, trust_env=False))

        def ready() -> bool:
            try:
                return http.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 600, "the gateway host", gateway)
        worker1 = host_process(network, "worker1", "worker", ["worker"], env["worker1"], log_dir)
        processes.append(worker1)
        # Warm: each worker host fetches the active version from the store and loads it at start.
        wait_for(lambda: "worker model ready: version 1" in worker1.log(), 600, "worker host 1", worker1)
        one = _job_seconds(http, url, documents, worker1)
        print(f"    one worker host: {len(documents) / one:.1f} docs/s", flush=True)
        worker2 = host_process(network, "worker2", "worker", ["worker"], env["worker2"], log_dir)
        processes.append(worker2)
        wait_for(lambda: "worker model ready: version 1" in worker2.log(), 600, "worker host 2", worker2)
        two = _job_seconds(http, url, documents, worker1, worker2)
        print(f"    two worker hosts: {len(documents) / two:.1f} docs/s", flush=True)

        with Session(engine, expire_on_commit=False) as session:
            version = publish_version(
                session=session,
                artifacts_dir=publisher.artifacts_dir,
                candidate=_candidate(model),
                settings=publisher,
            ).version
        started = time.monotonic()
        http.post(f"{url}/models/{version}/activate").raise_for_status()
        requested = time.monotonic() - started

        def answers() -> bool:
            reply = http.post(f"{url}/predict/", json={"text": "Kofi Annan visited Ghana."})
            return reply.status_code == 200 and reply.json().get("model_version") == version

        wait_for(answers, 600, f"/predict/ with version {version}", gateway)
        swap = time.monotonic() - started
        print(f"    activation to first answer on a fetching host: {swap:.1f} s", flush=True)
        return ScaleOut(len(documents), one, two, swap, requested)


def report(result: ScaleOut | None, model_note: str) -> str:
    if result is None:
        return "\n### Past one machine\n\nNot measured here (network namespaces are not permitted).\n"
    return (
        "\n### Past one machine: worker hosts that share no disk\n\n"
        f"Hosts in network namespaces (no folder in common), model {model_note} published to an S3 "
        f"server (moto) and fetched by every host into its own cache; {result.documents} documents "
        "per job, one worker process per host, all on the same cores.\n\n"
        "| | documents/s |\n| --- | ---: |\n"
        f"| one worker host | {result.one_per_s:.1f} |\n| two worker hosts | {result.two_per_s:.1f} |\n\n"
        f"From `POST /models/{{v}}/activate` to the first `/predict/` answered by that version on a "
        f"gateway host that had to fetch it: **{result.activation_to_answer_s:.1f} s** (of which the "
        f"activation request itself, which verifies the version in the store: "
        f"{result.activation_request_s:.1f} s).\n"
    )


def main(argv: list[str] | None = None) -> int:
    """The scale-out run alone: ``python -m bench.scaleout [--documents N]`` (prints, writes nothing)."""
    import argparse
    import tempfile

    from bench.jobs import conll_documents, default_model

    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a token-classification folder")
    parser.add_argument("--documents", type=int, default=2_000)
    args = parser.parse_args(argv)
    model, note = (args.model, f"`{args.model}`") if args.model else default_model()
    with tempfile.TemporaryDirectory(prefix="ner-bench-scaleout-") as tmp:
        result = run_scaleout(model, conll_documents(args.documents), Path(tmp) / "hosts", Path(tmp) / "logs")
    print(report(result, note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
