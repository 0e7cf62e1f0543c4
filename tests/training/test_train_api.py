"""/train and /models over HTTP (in-process app), and a run end to end through a real trainer worker."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.tables import ModelVersion, TrainingRun, VersionStatus
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from tests.support.conll_subset import conll_subset
from tests.support.model_folders import fake_model_folder
from tests.support.processes import start_gateway, start_worker, wait_until
from tests.support.registry import registry_restored


@pytest.fixture(scope="module")
def client(service_env: dict[str, str]) -> Iterator[TestClient]:
    """The gateway app in-process (no lifespan: these routes need no model)."""
    from gateway.app import create_app

    yield TestClient(create_app())


@pytest.fixture(scope="module", autouse=True)
def restore_registry(service_env: dict[str, str]) -> Iterator[None]:
    """Leave the shared test database's registry and training queue as this module found them."""
    with registry_restored(service_env["NER_REDIS_URL"]):
        yield


@pytest.fixture(scope="module")
def data_folder(service_env: dict[str, str]) -> Path:
    """A few hundred CoNLL sentences inside the first data root."""
    root = get_settings().data_roots[0]
    return conll_subset(get_settings().conll_dir, root / "small", train=192, validation=48, test=48)


def _register(tmp: Path, val_f1: float) -> int:
    with session_scope() as session:
        number = registry.next_version_number(session=session)
        folder = fake_model_folder(tmp / f"v{number}")
        write_manifest(folder)
        registry.register_version(
            session=session, version=number, path=str(folder), base_model="b", data_hash="h",
            data_ref={}, params={}, metrics={"epochs": []}, labels=["O"], val_f1=val_f1, test_f1=None,
        )  # fmt: skip
    return number


# --- /train ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"data": {"train": "/etc/passwd"}}, "outside the allowed data folders"),
        ({"data": {"train": "small/../../../../etc/passwd"}}, "outside the allowed data folders"),
        ({"data": {"train": "small/missing.conll"}}, "no such file"),
        ({"data": {"train": "small/train.conll"}, "loss": "dice"}, "loss"),
        ({"data": {"train": "small/train.conll"}, "epochs": 0}, "epochs"),
        ({"data": {"train": "small/train.conll"}, "epochz": 3}, "epochz"),
        ({"data": {"train": "small/train.conll", "dev": "x"}}, "dev"),
        ({"epochs": 3}, "data"),
        ({"data": {"train": "small/train.conll"}, "base_model": "/etc"}, "base_model"),
        ({"data": {"train": "small/train.conll"}, "base_model": "../../etc"}, "base_model"),
    ],
)
def test_bad_requests_are_refused_with_422_naming_the_problem(
    client: TestClient, data_folder: Path, body: dict, needle: str
) -> None:
    response = client.post("/train", json=body)
    assert response.status_code == 422, response.text
    assert needle in response.text
    with session_scope() as session:
        assert session.scalar(select(TrainingRun.id).limit(1)) is None  # nothing was queued


def test_a_run_is_queued_watched_and_cancelled(client: TestClient, data_folder: Path) -> None:
    body = {
        "data": {"train": "small/train.conll", "validation": "small/dev.conll"},
        "epochs": 2, "loss": "mom", "learning_rate": 5e-5, "batch_size": 16,
    }  # fmt: skip
    response = client.post("/train", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued" and accepted["status_url"].endswith(f"/train/{accepted['run_id']}")
    run = client.get(accepted["status_url"]).json()
    assert (
        run["status"] == "queued" and run["epochs"] == [] and run["step"] == 0 and run["eta_seconds"] is None
    )
    assert (
        run["params"]["loss"] == "mom" and run["params"]["epochs"] == 2 and run["params"]["batch_size"] == 16
    )
    assert run["params"]["max_length"] == 256  # a default of the recipe, filled in
    assert run["base_model"] == get_settings().base_model
    assert any(r["run_id"] == accepted["run_id"] for r in client.get("/train").json()["runs"])
    cancelled = client.post(f"/train/{accepted['run_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/train/{accepted['run_id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert client.get(f"/train/{uuid.uuid4()}").status_code == 404
    assert client.post(f"/train/{uuid.uuid4()}/cancel").status_code == 404


def test_uploaded_data_lands_in_the_uploads_folder_and_can_be_referenced(
    client: TestClient, data_folder: Path
) -> None:
    content = (data_folder / "train.conll").read_bytes()
    response = client.post("/train/uploads", files={"file": ("../../evil name.conll", io.BytesIO(content))})
    assert response.status_code == 201, response.text
    stored = Path(response.json()["path"])
    assert stored.is_relative_to(get_settings().uploads_dir) and stored.name == "evil_name.conll"
    assert stored.read_bytes() == content and response.json()["bytes"] == len(content)
    assert response.json()["filename"] == "../../evil name.conll"  # as sent: shown, never used as a path
    # The host-independent reference; the absolute path and the relative one name the same upload,
    # and every run records it as the reference, so a trainer on any host can find it.
    reference = response.json()["reference"]
    assert reference == f"upload:{stored.parent.name}/evil_name.conll"
    relative = str(stored.relative_to(get_settings().data_roots[0]))
    for ref in (str(stored), reference, relative):
        started = client.post("/train", json={"data": {"train": ref}, "epochs": 1})
        assert started.status_code == 202, (ref, started.text)
        run = client.get(started.json()["status_url"]).json()
        assert run["data"] == {"train": reference}, run["data"]
        client.post(f"/train/{started.json()['run_id']}/cancel")
    empty = client.post("/train/uploads", files={"file": ("e.conll", io.BytesIO(b""))})
    assert empty.status_code == 422


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("upload:../x", "not an upload reference"),
        ("upload:../../../../etc/passwd", "not an upload reference"),
        ("upload:/etc/passwd", "not an upload reference"),
        (f"upload:{'a' * 32}/../../../../etc/passwd", "not an upload reference"),
        (f"upload:{'a' * 32}/..", "not an upload reference"),
        (f"upload:{'a' * 32}", "not an upload reference"),
        (f"upload:{'a' * 32}/x/y.conll", "not an upload reference"),
        (f"upload:{uuid.uuid4().hex}/train.conll", "no such file"),  # well formed, never uploaded
        (f"uploads/{uuid.uuid4().hex}/train.conll", "no such file"),
    ],
)
def test_upload_references_name_nothing_but_recorded_uploads(
    client: TestClient, data_folder: Path, ref: str, needle: str
) -> None:
    # Recorded under an unknown id, a real file under the uploads folder is still refused: the
    # database decides what an upload reference names, not the disk.
    planted = (
        get_settings().uploads_dir / ref.removeprefix("upload:").split("/")[-2]
        if needle == "no such file"
        else None
    )
    if planted is not None:
        planted.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_folder / "train.conll", planted / "train.conll")
    with session_scope() as session:
        runs_before = session.scalar(select(func.count()).select_from(TrainingRun))
    try:
        response = client.post("/train", json={"data": {"train": "small/train.conll", "test": ref}})
    finally:
        if planted is not None:
            shutil.rmtree(planted)
    assert response.status_code == 422, response.text
    assert needle in response.text and "data.test" in response.text
    assert "root:" not in response.text
    with session_scope() as session:  # nothing was queued
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == runs_before


# --- /models --------------------------------------------------------------------------------------


def test_models_list_get_activate_and_roll_back(client: TestClient, tmp_path: Path) -> None:
    old = _register(tmp_path, 0.8)
    new = _register(tmp_path, 0.9)
    assert client.post(f"/models/{old}/activate").status_code == 200
    activated = client.post(f"/models/{new}/activate")
    assert activated.status_code == 200 and activated.json()["status"] == "active"
    listing = client.get("/models").json()
    assert listing["active"] == new
    statuses = {v["version"]: v["status"] for v in listing["versions"]}
    assert statuses[new] == "active" and statuses[old] == "retired"
    detail = client.get(f"/models/{old}").json()
    assert detail["val_f1"] == 0.8 and detail["path"].endswith(f"v{old}") and "metrics" in detail
    rolled_back = client.post(f"/models/{old}/activate")  # roll-back
    assert rolled_back.status_code == 200 and client.get("/models").json()["active"] == old
    assert client.get("/models/99999").status_code == 404
    assert client.get(f"/models/{2**40}").status_code == 422  # not an integer overflow 500
    assert client.post(f"/models/{2**40}/activate").status_code == 422
    assert client.post("/models/99999/activate").status_code == 404


def test_activating_a_missing_or_corrupt_folder_is_409_and_changes_nothing(
    client: TestClient, tmp_path: Path
) -> None:
    good = _register(tmp_path, 0.8)
    missing = _register(tmp_path, 0.9)
    corrupt = _register(tmp_path, 0.9)
    client.post(f"/models/{good}/activate")
    shutil.rmtree(tmp_path / f"v{missing}")
    (tmp_path / f"v{corrupt}" / "config.json").write_text("{not json")
    for version, needle in ((missing, "is missing"), (corrupt, "config.json")):
        response = client.post(f"/models/{version}/activate")
        assert response.status_code == 409 and needle in response.json()["detail"]
        assert client.get("/models").json()["active"] == good


# --- end to end -----------------------------------------------------------------------------------


def _wait_for_run(base_url: str, run_id: str, worker, timeout: float = 600) -> dict:  # type: ignore[no-untyped-def]
    state: dict = {}

    def finished() -> bool:
        state.update(httpx.get(f"{base_url}/train/{run_id}", timeout=10).json())
        return state["status"] in ("succeeded", "failed", "cancelled")

    wait_until(finished, timeout, f"training run {run_id} to finish", worker)
    return state


@pytest.mark.slow
def test_post_train_runs_on_a_real_worker_publishes_promotes_and_predict_uses_it(
    service_env: dict[str, str], data_folder: Path, log_dir: Path, tmp_path: Path
) -> None:
    redis.Redis.from_url(service_env["NER_REDIS_URL"]).delete("training")  # no leftovers of other tests
    with session_scope() as session:
        # An active version left by another test (fake, val F1 0.8+) would rightly win the gate.
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.status == VersionStatus.active)
            .values(status=VersionStatus.retired)
        )
    # Nothing is active here: the operator's opt-in lets the first trained version go live.
    env = {**service_env, "NER_PROMOTE_POLICY": "f1", "NER_GATE_PROMOTE_FIRST": "true"}
    worker = start_worker(env, log_dir, queue="training")
    gateway, base_url = start_gateway(env, log_dir)
    try:
        # Bad data first: fails fast with file and line, publishes nothing.
        bad = data_folder / "bad.conll"
        bad.write_text("EU B-ORG\nrejects O\n\nGerman B-MISC\ncall\n")
        with session_scope() as session:
            versions_before = set(session.scalars(select(ModelVersion.version)))
        response = httpx.post(
            f"{base_url}/train", json={"data": {"train": str(bad)}, "epochs": 1}, timeout=30
        )
        assert response.status_code == 202, response.text
        failed = _wait_for_run(base_url, response.json()["run_id"], worker, timeout=120)
        assert failed["status"] == "failed" and failed["error"].startswith(
            f"{bad}:5: expected 'token ... tag'"
        )
        assert failed["step"] == 0 and failed["epochs"] == [] and failed["model_version"] is None
        with session_scope() as session:
            assert set(session.scalars(select(ModelVersion.version))) == versions_before

        body = {
            "data": {"train": "small/train.conll", "validation": "small/dev.conll",
                     "test": "small/test.conll"},
            "epochs": 1, "batch_size": 16, "max_length": 64, "learning_rate": 3e-4, "loss": "mom",
        }  # fmt: skip
        response = httpx.post(f"{base_url}/train", json=body, timeout=30)
        assert response.status_code == 202, response.text
        run = _wait_for_run(base_url, response.json()["run_id"], worker)
        assert run["status"] == "succeeded", run
        assert run["step"] == run["total_steps"] > 0 and run["progress"] == 1.0
        assert [e["epoch"] for e in run["epochs"]] == [1] and run["epochs"][0]["f1"] is not None
        assert set(run["test_metrics"]["per_type"]) and run["test_metrics"]["confusion"]["labels"][0] == "O"
        version = run["model_version"]
        assert version not in versions_before and run["promoted"] is True
        models = httpx.get(f"{base_url}/models", timeout=10).json()
        assert models["active"] == version
        detail = httpx.get(f"{base_url}/models/{version}", timeout=10).json()
        assert detail["training_run_id"] == response.json()["run_id"] and detail["metrics"]["epochs"]
        card = (Path(detail["path"]) / "README.md").read_text()
        assert "Per-epoch metrics" in card and detail["data_hash"] in card

        # The gateway swaps to the new version without a restart.
        answered: dict = {}

        def predicts_with_new_version() -> bool:
            reply = httpx.post(f"{base_url}/predict/", json={"text": "Kofi Annan visited Ghana."}, timeout=30)
            answered.update(reply.json() if reply.status_code == 200 else {"status": reply.status_code})
            return answered.get("model_version") == version

        wait_until(predicts_with_new_version, 60, f"/predict/ to answer with version {version}", gateway)
        assert isinstance(answered["entities"], list)
        assert json.loads(json.dumps(answered))["model_version"] == version
    finally:
        gateway.stop()
        worker.stop()
