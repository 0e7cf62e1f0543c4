"""The training task's body is safe to repeat: leases, finished runs, published runs, orphan re-queueing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import delete

from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.tables import ApiKey, ModelVersion, RunStatus, TrainingRun
from shared.keys import service as keys
from shared.registry import service as registry
from tests.support.model_folders import fake_model_folder
from trainer.runs import LEASE_KEY, _hooks, execute_run, requeue_orphaned_runs


@pytest.fixture
def broker(service_env: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(service_env["NER_REDIS_URL"])
    client.delete("training")
    yield client
    client.delete("training")
    client.close()


def _run(status: RunStatus, **values: object) -> uuid.UUID:
    with session_scope() as session:
        run = TrainingRun(status=status, data={"train": "x.conll"}, params={}, base_model="b", **values)
        session.add(run)
        session.flush()
        return run.id


def _status(run_id: uuid.UUID) -> TrainingRun:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        session.expunge(run)
        return run


def _queued_run_ids(client: redis.Redis) -> list[str]:
    return [
        json.loads(body)["headers"]["argsrepr"].strip("[]'\"") for body in client.lrange("training", 0, -1)
    ]


def test_orphaned_running_runs_are_requeued_but_not_ones_with_a_live_lease(broker: redis.Redis) -> None:
    orphan = _run(RunStatus.running)
    alive = _run(RunStatus.running)
    finished = _run(RunStatus.succeeded)
    broker.set(LEASE_KEY.format(run_id=alive), "someone", ex=30)
    try:
        requeued = requeue_orphaned_runs(settings=get_settings())
        assert orphan in requeued and alive not in requeued and finished not in requeued
        assert str(orphan) in _queued_run_ids(broker)
    finally:
        with session_scope() as session:
            session.execute(delete(TrainingRun).where(TrainingRun.id.in_([orphan, alive, finished])))


def test_a_repeated_delivery_leaves_finished_and_leased_runs_alone(broker: redis.Redis) -> None:
    settings = get_settings()
    done = _run(RunStatus.succeeded, model_version=None)
    assert execute_run(run_id=done, settings=settings) == RunStatus.succeeded
    leased = _run(RunStatus.running)
    broker.set(LEASE_KEY.format(run_id=leased), "another worker", ex=30)
    assert execute_run(run_id=leased, settings=settings) is None  # someone else trains it
    assert _status(leased).status == RunStatus.running
    cancelled_early = _run(RunStatus.queued, cancel_requested=True)
    assert execute_run(run_id=cancelled_early, settings=settings) == RunStatus.cancelled
    with session_scope() as session:
        session.execute(delete(TrainingRun).where(TrainingRun.id.in_([done, leased, cancelled_early])))


def test_a_run_published_before_its_worker_died_is_not_trained_again(tmp_path: Path) -> None:
    run_id = _run(RunStatus.running)
    with session_scope() as session:
        number = registry.next_version_number(session=session)
        registry.register_version(
            session=session, version=number, path=str(fake_model_folder(tmp_path / "v")), base_model="b",
            data_hash="h", data_ref={}, params={}, metrics={}, labels=["O"], val_f1=0.5, test_f1=None,
            training_run_id=run_id,
        )  # fmt: skip
    status = execute_run(run_id=run_id, settings=get_settings())
    run = _status(run_id)
    assert status == RunStatus.succeeded and run.model_version == number
    with session_scope() as session:
        session.execute(delete(ModelVersion).where(ModelVersion.version == number))
        session.execute(delete(TrainingRun).where(TrainingRun.id == run_id))


def test_bad_data_fails_the_run_before_training_with_file_and_line(tmp_path: Path) -> None:
    root = get_settings().data_roots[0]
    bad = root / "tasks-bad" / "train.conll"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("EU B-ORG\n\nrejects X-ORG\n")
    run_id = _run(RunStatus.queued)
    with session_scope() as session:
        session.get(TrainingRun, run_id).data = {"train": str(bad)}
    assert execute_run(run_id=run_id, settings=get_settings()) == RunStatus.failed
    run = _status(run_id)
    assert run.error == f"{bad}:3: tag 'X-ORG' is not IOB (expected O, B-TYPE or I-TYPE)"
    assert run.step == 0 and run.model_version is None
    with session_scope() as session:
        session.execute(delete(TrainingRun).where(TrainingRun.id == run_id))


def test_a_running_run_stops_once_its_key_is_revoked_however_it_was_revoked() -> None:
    """The trainer's stop check covers revocation too: a run of a revoked key trains no further."""
    with session_scope() as session:
        key_id = keys.create_key(session=session, scope="train", name="tasks-revoked").id
    run_id = _run(RunStatus.running, api_key_id=key_id)
    hooks = _hooks(run_id)
    assert hooks.should_stop() is False
    with session_scope() as session:  # revoked in SQL: no service cancelled the run
        session.get(ApiKey, key_id).revoked_at = datetime.now(UTC)
    assert _status(run_id).cancel_requested is False
    assert hooks.should_stop() is True
    with session_scope() as session:
        session.execute(delete(TrainingRun).where(TrainingRun.id == run_id))


@pytest.mark.slow
def test_a_run_reports_engine_scores_and_without_a_usable_gate_set_waits_for_an_admin(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """The version's F1 is measured through the engine; an unusable NER_GATE_DATA holds, never fails."""
    from sqlalchemy import select, update

    from shared.core.tables import VersionStatus
    from shared.registry.manifest import write_manifest
    from tests.support.conll_subset import conll_subset

    settings = get_settings()
    folder = conll_subset(
        settings.conll_dir, settings.data_roots[0] / "tasks-gate", train=48, validation=16, test=16
    )
    # Two documents in the test file: its engine scores come one sentence per text and per document.
    blocks = (folder / "test.conll").read_text().strip().split("\n\n")
    documents = ["\n\n".join(blocks[:6]), "\n\n".join(blocks[6:])]
    (folder / "test.conll").write_text("".join(f"-DOCSTART- O\n\n{d}\n\n" for d in documents))
    with session_scope() as session:
        before = set(session.scalars(select(ModelVersion.version)))
        previous = registry.get_active(session=session)
        active = registry.next_version_number(session=session)
        folder = fake_model_folder(tmp_path / "active")
        write_manifest(folder)
        registry.register_version(
            session=session, version=active, path=str(folder), base_model=settings.base_model,
            data_hash="h", data_ref={}, params={}, metrics={}, labels=["O"], val_f1=0.1, test_f1=None,
        )  # fmt: skip
        registry.activate(session=session, version=active)
    run_id = _run(RunStatus.queued)
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        run.data = {"train": "tasks-gate/train.conll", "validation": "tasks-gate/dev.conll",
                    "test": "tasks-gate/test.conll"}  # fmt: skip
        run.params = {"epochs": 1, "batch_size": 16, "learning_rate": 3e-4}
        run.base_model = settings.base_model
    try:
        gated = settings.model_copy(update={"gate_data": "tasks-gate/missing.conll"})
        assert execute_run(run_id=run_id, settings=gated) == RunStatus.succeeded, _status(run_id).error
        with session_scope() as session:
            run = session.get(TrainingRun, run_id)
            version = session.get(ModelVersion, run.model_version)
            assert registry.get_active(session=session).version == active and run.promoted is False
            assert version.status == VersionStatus.candidate and version.gate_decision == "held"
            assert "no gate set" in version.gate_reason
            engine = version.metrics["engine"]
            assert engine["validation"]["sentences"]["sentences"] == 16
            assert version.val_f1 == engine["validation"]["sentences"]["f1"]
            assert version.test_f1 == engine["test"]["sentences"]["f1"]
            assert set(engine["test"]) == {"sentences", "documents"} and set(engine["validation"]) == {
                "sentences"
            }
            assert engine["test"]["documents"]["sentences"] == engine["test"]["sentences"]["sentences"] == 16
            card = (Path(version.path) / "README.md").read_text()
            assert "Test scores through the engine, one sentence per text" in card
            assert "Test scores of the training loop" in card
    finally:
        with session_scope() as session:
            session.execute(delete(ModelVersion).where(ModelVersion.version.not_in(before or {-1})))
            session.execute(delete(TrainingRun).where(TrainingRun.id == run_id))
            if previous is not None:
                session.flush()
                session.execute(
                    update(ModelVersion)
                    .where(ModelVersion.version == previous.version)
                    .values(status=VersionStatus.active)
                )
