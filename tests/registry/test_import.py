"""Bringing an existing model into the registry: ``ner models import`` and ``POST /models/import``.

A folder and a hub-id-shaped reference (the Hub's servers cannot be reached here: its download is
replaced by the same folder, the only seam) become versions that are listed, activatable and rolled
back to, with their card, manifest and (with a gate set) gate scores.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.orm import Session

from shared.cli.main import main
from shared.core.config import get_settings
from shared.core.db import make_engine
from shared.keys import service as keys
from shared.registry import importer
from shared.registry import service as registry
from shared.registry.manifest import validate_version_folder
from tests.support.auth import settings_env
from tests.support.processes import start_gateway, wait_until
from tests.support.services import RedisServer, migrated_database
from trainer.conll import read_conll

pytestmark = pytest.mark.slow

SENTENCE = "Google was founded by Larry Page and Sergey Brin in California."


@pytest.fixture
def registry_env(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, str]]:
    """A registry of its own (database, artifacts, data root with a 30-sentence gate set)."""
    data = tmp_path / "data"
    data.mkdir()
    sentences = read_conll(get_settings().conll_dir / "eng.testa", limit=30)
    (data / "gate.conll").write_text(
        "\n\n".join("\n".join(f"{t} {g}" for t, g in zip(s.tokens, s.tags, strict=True)) for s in sentences)
    )
    with migrated_database() as url:
        env = {
            "NER_DATABASE_URL": url,
            "NER_REDIS_URL": redis_server.url,
            "NER_ARTIFACTS_DIR": str(tmp_path / "models"),
            "NER_DATA_ROOTS": str(data),
            "NER_GATE_DATA": str(data / "gate.conll"),
        }
        with settings_env(env):
            from shared.core.db import reset_engine

            reset_engine()
            yield env
            reset_engine()


def _versions(url: str) -> dict[int, str]:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return {row.version: row.status.value for row in registry.list_versions(session=session)}
    finally:
        engine.dispose()


def test_cli_imports_a_folder_and_a_hub_id_activates_and_rolls_back(
    registry_env: dict[str, str], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # A folder as people have one: with a pickle copy of the weights, which must never be copied.
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    assert main(["models", "import", str(folder)]) == 0
    assert "as version 1" in capsys.readouterr().out
    url = registry_env["NER_DATABASE_URL"]
    assert _versions(url) == {1: "candidate"}

    # A hub id: downloaded through the seam (the Hub's servers are out of reach), then as above.
    asked: list[str] = []

    def fake_hub(repo_id: str) -> Path:
        asked.append(repo_id)
        return tiny_model_dir

    monkeypatch.setattr(importer, "hub_download", fake_hub)
    assert main(["models", "import", "acme/tiny-conll-ner", "--activate"]) == 0
    assert asked == ["acme/tiny-conll-ner"]
    assert _versions(url) == {1: "candidate", 2: "active"}

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            v1 = registry.get_version(session=session, version=1)
            v2 = registry.get_version(session=session, version=2)
            assert v1 is not None and v2 is not None
            assert v1.data_ref == {"imported_from": str(folder)}
            assert v2.data_ref == {"imported_from": "acme/tiny-conll-ner"}
            id2label = json.loads((tiny_model_dir / "config.json").read_text())["id2label"]
            assert v2.labels == [id2label[k] for k in sorted(id2label, key=int)]
            for row in (v1, v2):
                path = Path(row.path)
                validate_version_folder(path)  # manifest hashes match, safetensors only
                assert not (path / "pytorch_model.bin").exists()
                assert f"version {row.version}" in (path / "README.md").read_text()
                # The gate set's scores, measured through the engine, beside the active version's.
                assert row.gate_decision == "held" and "imported" in (row.gate_reason or "")
                assert row.gate_score is not None and set(row.gate_score["per_type"]) >= {"PER", "LOC"}
                assert 0 <= row.gate_score["f1"] <= 1
            # Rolled back to the folder's version: it is a version like any other.
            registry.promote(session=session, version=1, redis_url=registry_env["NER_REDIS_URL"])
        assert _versions(url) == {1: "active", 2: "retired"}
    finally:
        engine.dispose()

    # What cannot be served is refused with one line naming the problem; nothing is registered.
    pickle_only = tmp_path / "pickle-only"
    pickle_only.mkdir()
    shutil.copy(tiny_model_dir / "config.json", pickle_only)
    (pickle_only / "pytorch_model.bin").write_bytes(b"pickle")
    assert main(["models", "import", str(pickle_only)]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "pytorch_model.bin" in err
    assert main(["models", "import", "not a model"]) == 1
    assert "neither a model folder nor a Hub id" in capsys.readouterr().err
    assert _versions(url) == {1: "active", 2: "retired"}


def test_api_import_needs_admin_and_a_folder_inside_the_data_roots(
    service_env: dict[str, str], tiny_model_dir: Path, tmp_path: Path, log_dir: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_model_dir, data / "ours")
    outside = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, outside)
    with migrated_database() as url:
        engine = make_engine(url)
        with Session(engine) as session:
            admin = keys.create_key(session=session, scope="admin", name="ops").plaintext
            train = keys.create_key(session=session, scope="train", name="ml").plaintext
        engine.dispose()
        env = {
            **service_env,
            "NER_DATABASE_URL": url,
            "NER_AUTH": "on",
            "NER_ARTIFACTS_DIR": str(tmp_path / "models"),
            "NER_DATA_ROOTS": str(data),
            "NER_MODEL": str(tiny_model_dir),
            "NER_MODEL_IMPORT": "true",  # NER_MODEL at a first start: imported as version 1
        }
        gateway, base = start_gateway(env, log_dir)
        try:
            wait_until(
                lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 120, "ready", gateway
            )

            def post(key: str, body: dict) -> httpx.Response:
                return httpx.post(f"{base}/models/import", json=body, headers={"X-API-Key": key}, timeout=120)

            # Who is calling: the UI's key check.
            me = httpx.get(f"{base}/keys/me", headers={"X-API-Key": train}, timeout=10).json()
            assert me["name"] == "ml" and me["scope"] == "train" and me["scopes"] == ["train"]
            assert httpx.get(f"{base}/keys/me", timeout=10).status_code == 401
            assert (
                httpx.get(f"{base}/keys/me", headers={"X-API-Key": "ner_bad_x"}, timeout=10).status_code
                == 401
            )

            assert post(train, {"source": str(data / "ours")}).status_code == 403
            refused = post(admin, {"source": str(outside)})
            assert (
                refused.status_code == 422
                and "outside the service's data folders" in refused.json()["detail"]
            )
            assert post(admin, {"source": "../../etc"}).status_code == 422
            assert post(admin, {"source": ""}).status_code == 422
            assert post(admin, {"source": str(data / "ours"), "extra": 1}).status_code == 422

            # NER_MODEL is imported in the background at a first start (the gateway answers meanwhile).
            wait_until(
                lambda: httpx.get(f"{base}/models/1", headers={"X-API-Key": admin}, timeout=10).is_success,
                120,
                "NER_MODEL to be imported as version 1",
                gateway,
            )
            seeded = httpx.get(f"{base}/models/1", headers={"X-API-Key": admin}, timeout=10).json()
            assert seeded["status"] == "active"
            assert seeded["data_ref"] == {"imported_from": str(tiny_model_dir)}
            validate_version_folder(seeded["path"])

            created = post(admin, {"source": str(data / "ours"), "activate": True})
            assert created.status_code == 201, created.text
            version = created.json()["version"]
            assert created.json()["status"] == "active"
            listed = httpx.get(f"{base}/models", headers={"X-API-Key": admin}, timeout=10).json()
            assert listed["active"] == version
            # Its gate scores are a trainer's job (test below): the task waits on the training queue.
            queued = redis.Redis.from_url(env["NER_REDIS_URL"]).lrange("training", 0, -1)
            headers = [json.loads(message)["headers"] for message in queued]
            assert any(
                h.get("task") == importer.SCORE_TASK and h.get("argsrepr") == f"[{version}]" for h in headers
            ), headers

            def answers_with_it() -> bool:
                reply = httpx.post(
                    f"{base}/predict/", json={"text": SENTENCE}, headers={"X-API-Key": admin}, timeout=30
                )
                return reply.status_code == 200 and reply.json()["model_version"] == version

            wait_until(answers_with_it, 60, "/predict/ to answer with the imported version", gateway)
            # Rolled back to the model the gateway was started with: a version like any other.
            back = httpx.post(f"{base}/models/1/activate", headers={"X-API-Key": admin}, timeout=30)
            assert back.status_code == 200 and back.json()["status"] == "active"
            version = 1
            wait_until(answers_with_it, 60, "/predict/ to answer with version 1 again", gateway)
        finally:
            gateway.stop()


def test_a_trainer_scores_a_version_imported_through_the_api_on_the_gate_set(
    registry_env: dict[str, str], tiny_model_dir: Path
) -> None:
    from shared.core.db import get_sessionmaker
    from trainer.tasks import score_import

    with get_sessionmaker()() as session:
        imported = importer.import_model(
            session=session,
            artifacts_dir=Path(registry_env["NER_ARTIFACTS_DIR"]),
            source=str(tiny_model_dir),
            verify=None,  # as the API registers it: no gate set on the gateway
        )
        assert imported is not None and imported.decision is None
        version = imported.version.version
    assert score_import.run(version) == "held"
    with get_sessionmaker()() as session:
        row = registry.get_version(session=session, version=version)
        assert row is not None and row.gate_decision == "held" and "imported" in (row.gate_reason or "")
        assert row.gate_score is not None and set(row.gate_score["per_type"]) >= {"PER", "LOC"}
        assert 0 <= row.gate_score["f1"] <= 1
    assert score_import.run(version + 1) is None  # a version that does not exist: nothing to score
