"""Model registry on real Postgres and Redis: publish N+1, the promote gate, activation checks, notify."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import datasets
import pytest
import redis
from sqlalchemy.orm import Session

from shared.core.tables import ModelVersion, VersionStatus
from shared.registry import gate
from shared.registry import service as registry
from shared.registry.errors import CorruptVersion, VersionNotFound
from shared.registry.manifest import validate_version_folder
from shared.registry.notify import ACTIVE_CHANNEL, notify_active
from shared.registry.publish import publish_version
from shared.training.params import TrainParams
from tests.support.model_folders import LABELS, fake_model_folder
from tests.support.services import RedisServer
from trainer import card
from trainer.data import LoadedData
from trainer.metrics import EpochMetrics
from trainer.training import TrainResult


def fake_result(folder: Path, val_f1: float, test_f1: float = 0.5) -> TrainResult:
    scores = {"precision": val_f1, "recall": val_f1, "f1": val_f1, "accuracy": 0.9, "per_type": {}}
    return TrainResult(
        model_dir=fake_model_folder(folder),
        labels=LABELS,
        epochs=[EpochMetrics(1, 0.5, 0.4, val_f1, val_f1, val_f1, 0.9)],
        validation=scores,
        test={
            **scores,
            "f1": test_f1,
            "confusion": {"labels": LABELS, "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
        },
        best_epoch=1,
        train_seconds=2.0,
        train_tokens=1000,
    )


FAKE_DATA = LoadedData(
    splits=datasets.DatasetDict(), labels=LABELS, data_hash="d" * 64, sources={"train": "/data/train.conll"}
)


def publish(session: Session, tmp_path: Path, name: str, val_f1: float) -> ModelVersion:
    candidate = card.candidate(
        result=fake_result(tmp_path / name, val_f1),
        base_model="base/encoder",
        data=FAKE_DATA,
        params=TrainParams(epochs=1, loss="mom"),
    )
    return publish_version(session=session, artifacts_dir=tmp_path / "artifacts", candidate=candidate)


def test_publish_writes_a_complete_folder_and_registers_the_next_version(
    db_session: Session, tmp_path: Path
) -> None:
    first = publish(db_session, tmp_path, "run1", 0.80)
    second = publish(db_session, tmp_path, "run2", 0.70)
    assert second.version == first.version + 1  # N+1, whatever other tests registered before
    assert first.status == VersionStatus.candidate and first.val_f1 == 0.80 and first.test_f1 == 0.5
    folder = Path(second.path)
    assert folder == tmp_path / "artifacts" / f"v{second.version}"
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "metrics.json",
        "README.md",
        "manifest.json",
    } <= {p.name for p in folder.iterdir()}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (
        metrics["version"] == second.version
        and metrics["validation"]["f1"] == 0.70
        and metrics["labels"] == LABELS
    )
    card = (folder / "README.md").read_text()
    for needle in ("base/encoder", "d" * 64, '"loss": "mom"', "Test scores", "/data/train.conll"):
        assert needle in card
    assert not list((tmp_path / "artifacts").glob(".staging-*"))
    validate_version_folder(folder)


def test_the_callers_own_validation_f1_never_promotes_over_an_active_version(
    db_session: Session, tmp_path: Path
) -> None:
    for row in registry.list_versions(session=db_session):
        row.status = VersionStatus.retired  # this test decides what is active
    db_session.flush()
    first = publish(db_session, tmp_path, "a", 0.80)
    # Nothing active yet: a first version waits for an admin unless the operator opted in.
    waiting = gate.decide(session=db_session, candidate=first, policy="f1")
    assert waiting.decision == "held" and "NER_GATE_PROMOTE_FIRST" in waiting.reason
    assert gate.decide(session=db_session, candidate=first, policy="f1", promote_first=True).promoted
    registry.activate(session=db_session, version=first.version)
    # Issue 12: F1 measured on a validation file the caller chose (one sentence) is no evidence.
    perfect = publish(db_session, tmp_path, "b", 1.0)
    decision = gate.decide(session=db_session, candidate=perfect, policy="f1")
    assert decision.decision == "held" and "no gate set" in decision.reason
    assert not gate.decide(session=db_session, candidate=perfect, policy="never").promoted


def test_activation_checks_the_folder_and_keeps_the_active_version_on_error(
    db_session: Session, tmp_path: Path
) -> None:
    good = publish(db_session, tmp_path, "a", 0.8)
    missing = publish(db_session, tmp_path, "b", 0.9)
    corrupt = publish(db_session, tmp_path, "c", 0.9)
    registry.activate(session=db_session, version=good.version)
    shutil.rmtree(missing.path)
    weights = Path(corrupt.path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptVersion, match="is missing"):
        registry.activate(session=db_session, version=missing.version)
    with pytest.raises(CorruptVersion, match=r"model\.safetensors is corrupt"):
        registry.activate(session=db_session, version=corrupt.version)
    assert registry.get_active(session=db_session).version == good.version
    with pytest.raises(VersionNotFound):
        registry.activate(session=db_session, version=999)


def test_activate_retires_the_previous_version_and_rolls_back(db_session: Session, tmp_path: Path) -> None:
    one = publish(db_session, tmp_path, "a", 0.8)
    two = publish(db_session, tmp_path, "b", 0.9)
    registry.activate(session=db_session, version=one.version)
    registry.activate(session=db_session, version=two.version)
    db_session.refresh(one)
    assert (one.status, two.status) == (VersionStatus.retired, VersionStatus.active)
    registry.activate(session=db_session, version=one.version)  # roll back
    db_session.refresh(two)
    assert registry.get_active(session=db_session).version == one.version
    assert two.status == VersionStatus.retired
    listed = [v.version for v in registry.list_versions(session=db_session)]
    assert [v for v in listed if v in (one.version, two.version)] == [two.version, one.version]


def test_promote_announces_the_version_on_the_active_channel(
    db_session: Session, tmp_path: Path, redis_server: RedisServer
) -> None:
    version = publish(db_session, tmp_path, "a", 0.8)
    client = redis.Redis.from_url(redis_server.url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(ACTIVE_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscription is live before the announcement
    received: list[dict] = []

    def listen() -> None:
        message = pubsub.get_message(timeout=5)
        if message:
            received.append(json.loads(message["data"]))

    listener = threading.Thread(target=listen)
    listener.start()
    registry.promote(session=db_session, version=version.version, redis_url=redis_server.url)
    listener.join()
    assert received == [{"version": version.version}]
    pubsub.close()
    client.close()


def test_notify_without_redis_does_not_fail_the_activation() -> None:
    assert notify_active(redis_url="redis://127.0.0.1:1/0", version=3) is False
