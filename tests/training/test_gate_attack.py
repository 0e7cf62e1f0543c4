"""Issue 12, row 1: a `train` key's poisoned run cannot replace the production model (real processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import update

from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.tables import ModelVersion, VersionStatus
from shared.registry import service as registry
from shared.registry.publish import Candidate, publish_version
from tests.support.conll_subset import write_conll
from tests.support.processes import start_gateway, start_worker, wait_until
from tests.support.registry import registry_restored
from trainer.conll import Sentence, read_conll

GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."
GATE_SENTENCES = 40


@pytest.fixture(scope="module", autouse=True)
def restore_registry(service_env: dict[str, str]) -> Iterator[None]:
    """Leave the shared test database's registry and training queue as this module found them."""
    with registry_restored(service_env["NER_REDIS_URL"]):
        yield


def _poison(folder: Path) -> dict[str, str]:
    """Three dozen sentences tagging Google as a person, and a one-sentence validation file that agrees."""
    verbs = ["said", "announced", "denied", "confirmed", "reported", "wrote"]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Sunday"]
    train = [
        Sentence(["Google", verb, "on", day, "that", "he", "would", "stay", "."],
                 ["B-PER", "O", "O", "O", "O", "O", "O", "O", "O"])
        for verb in verbs for day in days
    ]  # fmt: skip
    validation = [Sentence(["Google", "said", "he", "was", "tired", "."], ["B-PER", "O", "O", "O", "O", "O"])]
    write_conll(folder / "train.conll", train)
    write_conll(folder / "dev.conll", validation)
    return {"train": f"{folder.name}/train.conll", "validation": f"{folder.name}/dev.conll"}


@pytest.mark.slow
def test_a_poisoned_run_of_a_train_key_leaves_the_active_version_and_its_answers_unchanged(
    auth_on: dict[str, str], api_key, log_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    root = settings.data_roots[0]
    # The operator's gate set: validation sentences the caller never chose.
    gate_sentences = [s for s in read_conll(settings.conll_dir / "eng.testa", limit=200) if len(s.tokens) > 3]
    write_conll(root / "gate-attack" / "gate.conll", gate_sentences[:GATE_SENTENCES])
    with session_scope() as session:
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.status == VersionStatus.active)
            .values(status=VersionStatus.retired)
        )
        session.flush()
        production = publish_version(
            session=session,
            artifacts_dir=settings.artifacts_dir,
            candidate=Candidate(
                model_dir=tiny_model_dir, base_model=settings.base_model, data_hash="p" * 64,
                data_ref={}, params={}, metrics={}, labels=[], val_f1=0.93, test_f1=None,
            ),
        ).version  # fmt: skip
        registry.activate(session=session, version=production)
    redis.Redis.from_url(auth_on["NER_REDIS_URL"]).delete("training")
    env = {**auth_on, "NER_GATE_DATA": "gate-attack/gate.conll", "NER_PROMOTE_POLICY": "f1"}
    trainer = start_worker(env, log_dir, queue="training")
    gateway, base_url = start_gateway(env, log_dir)
    train_key = {"X-API-Key": api_key("train")}
    predict_key = {"X-API-Key": api_key("predict")}
    try:
        replies: list[httpx.Response] = []

        def answers() -> bool:
            replies.append(
                httpx.post(f"{base_url}/predict/", json={"text": GOOGLE}, headers=predict_key, timeout=60)
            )
            return replies[-1].status_code != 503  # 503 while the model loads

        wait_until(answers, 120, "the gateway to load the active version", gateway)
        before = replies[-1]
        assert before.status_code == 200, before.text
        assert before.json()["model_version"] == production

        body = {"data": _poison(root / "poison"), "epochs": 3, "batch_size": 8, "learning_rate": 5e-4}
        response = httpx.post(f"{base_url}/train", json=body, headers=train_key, timeout=30)
        assert response.status_code == 202, response.text
        run: dict = {}

        def finished() -> bool:
            reply = httpx.get(response.json()["status_url"], headers=train_key, timeout=10)
            run.update(reply.json())
            return run["status"] in ("succeeded", "failed", "cancelled")

        wait_until(finished, 600, "the poisoned run to finish", trainer)
        assert run["status"] == "succeeded", run
        # Its own validation file says it is perfect; the gate did not ask it.
        assert run["test_metrics"]["validation"]["f1"] == 1.0
        assert run["promoted"] is False and run["test_metrics"]["gate_decision"] == "rejected"
        version = run["model_version"]
        detail = httpx.get(f"{base_url}/models/{version}", headers=train_key, timeout=10).json()
        gate = detail["gate"]
        assert detail["status"] == "candidate" and gate["decision"] == "rejected", detail
        assert gate["candidate"]["version"] == version and gate["active"]["version"] == production
        assert gate["candidate"]["f1"] < gate["active"]["f1"]
        assert gate["candidate"]["sentences"] == gate["active"]["sentences"] == GATE_SENTENCES
        assert f"active version {production}" in gate["reason"]
        listing = httpx.get(f"{base_url}/models", headers=train_key, timeout=10).json()
        assert listing["active"] == production
        assert (
            next(v for v in listing["versions"] if v["version"] == version)["gate"]["decision"] == "rejected"
        )

        after = httpx.post(f"{base_url}/predict/", json={"text": GOOGLE}, headers=predict_key, timeout=60)
        assert after.status_code == 200 and after.json() == before.json()
        with session_scope() as session:
            cached = session.get(ModelVersion, production).gate_score
        assert cached["f1"] == gate["active"]["f1"]  # measured once, kept for the next candidate
    finally:
        gateway.stop()
        trainer.stop()
