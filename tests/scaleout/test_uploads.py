"""Training uploads across gateway hosts: two gateways on loopback, each with its own data folder,
sharing one PostgreSQL database that is also the artifact store (NER_ARTIFACTS_URL=postgresql).

A file uploaded through gateway 1 is accepted by ``POST /train`` on gateway 2 (checked in the
database and the store, never on gateway 2's disk), only for the key that uploaded it, and a trainer
with a third data folder fetches it and reads it with the data loader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.orm import Session

from shared.cli.embedded_redis import free_port
from shared.core.config import get_settings
from shared.core.db import make_engine
from shared.keys import service as keys
from tests.support.conll_subset import conll_subset
from tests.support.processes import REPO_ROOT, ServiceProcess, ner, wait_until
from tests.support.services import RedisServer, migrated_database
from trainer.conll import read_conll

# The trainer's own step, run as a process of the "trainer host": resolve the run's data (fetching
# uploads from the store), then read it with the loader every run uses.
TRAINER_STEP = """
import json, sys
from shared.core.config import get_settings
from shared.training.service import allowed_roots
from trainer.data import load_data
from trainer.runs import resolve_data

settings = get_settings()
spec = resolve_data(data_ref=json.loads(sys.argv[1]), settings=settings)
data = load_data(spec, roots=allowed_roots(settings), cache_dir=settings.state_dir / "cache")
print(json.dumps({"spec": spec.as_dict(), "sentences": {k: len(v) for k, v in data.splits.items()}}))
"""


@dataclass(frozen=True)
class Host:
    url: str
    env: dict[str, str]

    @property
    def uploads(self) -> Path:
        return Path(self.env["NER_DATA_ROOTS"]) / "uploads"


def _host_env(folder: Path, *, database: str, redis_url: str) -> dict[str, str]:
    return {
        "NER_DATABASE_URL": database,
        "NER_REDIS_URL": redis_url,
        "NER_BROKER_URL": "",
        "NER_ARTIFACTS_URL": "postgresql",
        "NER_STATE_DIR": str(folder),
        "NER_ARTIFACTS_DIR": str(folder / "models"),
        "NER_DATA_ROOTS": str(folder / "data"),
        "NER_AUTH": "on",
        "NER_DEFAULT_MODEL": "none",
        "NER_LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with migrated_database() as url:
        yield url


@pytest.fixture(scope="module")
def hosts(
    database: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory, log_dir: Path
) -> Iterator[tuple[Host, Host]]:
    """Two gateways, started side by side; their training queue is a Redis database of its own."""
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/9"  # no trainer of the session consumes it
    root = tmp_path_factory.mktemp("gateways")
    started: list[tuple[ServiceProcess, Host]] = []
    try:
        for name in ("gateway-1", "gateway-2"):
            env = _host_env(root / name, database=database, redis_url=redis_url)
            port = free_port()
            process = ServiceProcess(name, ner("serve", "--port", str(port)), env, log_dir)
            started.append((process, Host(url=f"http://127.0.0.1:{port}", env=env)))
        for process, host in started:

            def healthy(url: str = host.url) -> bool:
                try:
                    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, 120, f"{process.name}'s /healthz", process)
        yield started[0][1], started[1][1]
    finally:
        for process, _ in started:
            process.stop()
        redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture(scope="module")
def client_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("client")
    return conll_subset(get_settings().conll_dir, folder, train=24, validation=8, test=8)


def _key(database: str, name: str) -> str:
    engine = make_engine(database)
    try:
        with Session(engine) as session:
            return keys.create_key(session=session, scope="train", name=name).plaintext
    finally:
        engine.dispose()


def test_an_upload_through_one_gateway_trains_through_another_and_reaches_the_trainer(
    hosts: tuple[Host, Host], database: str, client_data: Path, tmp_path: Path
) -> None:
    first, second = hosts
    owner, other = _key(database, "uploader"), _key(database, "snooper")
    refs: dict[str, str] = {}
    with httpx.Client(timeout=30) as http:
        for split, name in (("train", "train.conll"), ("validation", "dev.conll")):
            with (client_data / name).open("rb") as handle:
                reply = http.post(
                    f"{first.url}/train/uploads", files={"file": (name, handle)}, headers={"X-API-Key": owner}
                )
            assert reply.status_code == 201, reply.text
            body = reply.json()
            stored = Path(body["path"])
            assert (
                stored.is_relative_to(first.uploads)
                and stored.read_bytes() == (client_data / name).read_bytes()
            )
            assert body["reference"] == f"upload:{stored.parent.name}/{name}"
            assert not (second.uploads / stored.parent.name).exists()  # gateway 2 never had the file
            refs[split] = body["reference"]
        # The older relative form names the same upload, on any host.
        validation_relative = "uploads/" + refs["validation"].removeprefix("upload:")

        # Another key's upload is as missing as one that never was; a malformed reference is refused.
        for key, data in (
            (other, {"train": refs["train"]}),
            (other, {"train": "small/x.conll", "validation": validation_relative}),
            (owner, {"train": "upload:../x"}),
            (owner, {"train": "upload:" + "0" * 32 + "/../../etc/passwd"}),
        ):
            refused = http.post(f"{second.url}/train", json={"data": data}, headers={"X-API-Key": key})
            assert refused.status_code == 422, (data, refused.text)
            assert "root:" not in refused.text

        started = http.post(
            f"{second.url}/train",
            json={"data": {"train": refs["train"], "validation": validation_relative}, "epochs": 1},
            headers={"X-API-Key": owner},
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        # Recorded host-independently, and visible through either gateway (one database).
        run = http.get(f"{first.url}/train/{run_id}", headers={"X-API-Key": owner}).json()
        assert run["data"] == refs, run["data"]
        hidden = http.get(f"{first.url}/train/{run_id}", headers={"X-API-Key": other})
        assert hidden.status_code == 404
        http.post(f"{second.url}/train/{run_id}/cancel", headers={"X-API-Key": owner})

    # A trainer host with a data folder of its own: the files come from the store, checked, and read.
    trainer_env = _host_env(tmp_path / "trainer", database=database, redis_url="redis://127.0.0.1:1/0")
    result = subprocess.run(
        [sys.executable, "-c", TRAINER_STEP, json.dumps(run["data"])],
        env={**os.environ, **trainer_env}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    resolved = json.loads(result.stdout.strip().splitlines()[-1])
    trainer_uploads = Path(trainer_env["NER_DATA_ROOTS"]) / "uploads"
    for split, name in (("train", "train.conll"), ("validation", "dev.conll")):
        local = Path(resolved["spec"][split])
        assert local == trainer_uploads / refs[split].removeprefix("upload:")
        assert local.read_bytes() == (client_data / name).read_bytes()
        assert resolved["sentences"][split] == len(read_conll(client_data / name))
