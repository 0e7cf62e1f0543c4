"""A fresh install answers at once: `ner serve` seeds an empty registry with the shipped model as v1."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from shared.core.config import DEFAULT_MODEL_DIR, Settings
from shared.registry import seed
from tests.support.processes import REPO_ROOT, ner, start_gateway, wait_until

GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."
EXPECTED = [("Google", "ORG"), ("Larry Page", "PER"), ("Sergey Brin", "PER"), ("California", "LOC")]


def _fresh_env(service_env: dict[str, str], state: Path, default_model: Path) -> dict[str, str]:
    """A new state folder with its own SQLite database, no NER_MODEL, no network."""
    return {
        **service_env,
        "NER_STATE_DIR": str(state),
        "NER_DATABASE_URL": f"sqlite:///{state / 'ner.db'}",
        "NER_ARTIFACTS_DIR": str(state / "models"),
        "NER_DATA_ROOTS": str(state / "data"),
        "NER_MODEL": "",
        "NER_DEFAULT_MODEL": str(default_model),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def _serves_the_example_within_a_minute(env: dict[str, str], log_dir: Path) -> dict:
    subprocess.run(ner("db", "upgrade"), env=env, cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)
    started = time.monotonic()
    gateway, base_url = start_gateway(env, log_dir)
    answer: dict = {}

    def answers() -> bool:
        reply = httpx.post(f"{base_url}/predict/", json={"text": GOOGLE}, timeout=30)
        answer.update(reply.json() if reply.status_code == 200 else {})
        return reply.status_code == 200

    try:
        wait_until(answers, 60, "/predict/ to answer from the seeded version", gateway)
        answer["seconds"] = time.monotonic() - started
        answer["models"] = httpx.get(f"{base_url}/models", timeout=10).json()
    finally:
        gateway.stop()
    return answer


@pytest.mark.slow
def test_a_fresh_state_dir_serves_the_default_folder_as_version_1(
    service_env: dict[str, str], tmp_path: Path, tiny_model_dir: Path, log_dir: Path
) -> None:
    answer = _serves_the_example_within_a_minute(_fresh_env(service_env, tmp_path, tiny_model_dir), log_dir)
    assert answer["model_version"] == 1 and answer["seconds"] < 60
    assert [(e["word"], e["entity_group"]) for e in answer["entities"]] == EXPECTED
    assert answer["models"]["active"] == 1 and [v["version"] for v in answer["models"]["versions"]] == [1]
    assert (tmp_path / "models" / "v1" / "manifest.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "config.json").is_file(), reason="the shipped default model is not built yet"
)
def test_the_shipped_default_model_answers_the_example_offline_within_a_minute(
    service_env: dict[str, str], tmp_path: Path, log_dir: Path
) -> None:
    answer = _serves_the_example_within_a_minute(
        _fresh_env(service_env, tmp_path, DEFAULT_MODEL_DIR), log_dir
    )
    assert answer["model_version"] == 1 and answer["seconds"] < 60
    assert [(e["word"], e["entity_group"]) for e in answer["entities"]] == EXPECTED


def test_none_a_missing_folder_or_ner_model_seed_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    def settings(**values: object) -> Settings:
        # An unreachable database: nothing may even be looked up.
        return Settings(state_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none", **values)

    assert seed.default_model_folder(settings(default_model=str(tiny_model_dir))) == tiny_model_dir
    for disabled in ("none", "None", "", str(tmp_path / "absent")):
        assert seed.default_model_folder(settings(default_model=disabled)) is None
        assert seed.seed_registry(settings=settings(default_model=disabled)) is None
    assert (
        seed.seed_registry(settings=settings(default_model=str(tiny_model_dir), model="some/model")) is None
    )
    # A database that cannot be reached is logged, never raised: the process still starts.
    assert seed.seed_registry(settings=settings(default_model=str(tiny_model_dir))) is None


def test_the_seeded_version_carries_the_cards_engine_scores(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "shipped")
    metrics = {
        "base_model": "the/encoder", "data_hash": "a" * 64, "params": {"epochs": 3},
        "data": {"train": "eng.train"}, "validation": {"f1": 0.93}, "test": {"f1": 0.88},
        "engine": {"validation": {"sentences": {"f1": 0.0}}, "test": {"sentences": {"f1": 0.87}}},
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    candidate = seed.default_candidate(folder)
    # The engine's scores win, a zero included; the training loop's are the fallback.
    assert (candidate.val_f1, candidate.test_f1) == (0.0, 0.87)
    assert candidate.base_model == "the/encoder" and candidate.params == {"epochs": 3}
    assert candidate.labels[0] == "O" and candidate.data_ref["default_model"] == "shipped"
    (folder / "metrics.json").write_text(json.dumps({**metrics, "engine": {}}))
    assert seed.default_candidate(folder).val_f1 == 0.93
