"""The quality gate on the operator's gate set, through the engine; the shipped model seeded as version 1."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from shared.core.config import Settings, get_settings
from shared.core.db import make_engine
from shared.core.tables import ModelVersion, RunStatus, TrainingRun, VersionStatus
from shared.registry import gate, seed
from shared.registry import service as registry
from shared.registry.manifest import validate_version_folder
from shared.registry.publish import Candidate, publish_and_gate, publish_version
from shared.registry.schemas import version_detail, version_view
from tests.support.conll_subset import write_conll
from tests.support.services import migrated_database
from trainer import evaluation
from trainer.conll import read_conll

BASE = "base/encoder"


def _report(f1: float, **types: float) -> dict[str, Any]:
    per_type = {name: {"precision": v, "recall": v, "f1": v, "support": 10} for name, v in types.items()}
    return {"precision": f1, "recall": f1, "f1": f1, "per_type": per_type}


# --- the comparison -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "active", "passes", "needle"),
    [
        (_report(0.80, PER=0.9, ORG=0.7), _report(0.80, PER=0.9, ORG=0.7), True, "0.8000 >= 0.8000"),
        (_report(0.79, PER=0.9, ORG=0.7), _report(0.80, PER=0.9, ORG=0.7), False, "gate F1 0.7900 < 0.8000"),
        # Better overall, but one type fell by more than the margin.
        (_report(0.85, PER=0.99, ORG=0.67), _report(0.80, PER=0.9, ORG=0.7), False, "ORG 0.6700 < 0.7000"),
        # Within the margin (0.02) is allowed when overall is at least as good.
        (_report(0.81, PER=0.92, ORG=0.685), _report(0.80, PER=0.9, ORG=0.7), True, "no type worse"),
        # A type the candidate never predicts counts as F1 0.
        (_report(0.80, PER=0.95), _report(0.80, PER=0.9, ORG=0.01), True, ">="),
        (_report(0.80, PER=0.95), _report(0.80, PER=0.9, ORG=0.3), False, "ORG 0.0000 < 0.3000"),
    ],
)
def test_candidate_must_be_as_good_overall_and_no_type_worse_than_the_margin(
    candidate: dict, active: dict, passes: bool, needle: str
) -> None:
    ok, reason = gate.compare(candidate, active, type_margin=0.02)
    assert ok is passes and needle in reason


# --- decisions with the real engine scorer --------------------------------------------------------


@pytest.fixture(scope="module")
def gate_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """An operator's gate file of 40 validation sentences inside the data roots."""
    root = tmp_path_factory.mktemp("gate-data")
    sentences = [
        s for s in read_conll(get_settings().conll_dir / "eng.testa", limit=200) if len(s.tokens) > 3
    ]
    write_conll(root / "gate.conll", sentences[:40])
    return Settings(state_dir=root / "state", data_roots=[root], gate_data="gate.conll")


class Counting:
    """The trainer's real scorer, counting which folders it measured (to see the cache work)."""

    def __init__(self, gate_set: gate.GateSet) -> None:
        self.inner = gate_set
        self.scored: list[str] = []
        self.gate_set = replace(gate_set, score=self._score)

    def _score(self, folder: str) -> dict[str, Any]:
        self.scored.append(Path(folder).name)
        return self.inner.score(folder)


@pytest.fixture
def counting(gate_settings: Settings) -> Counting:
    gate_set = evaluation.gate_set_from_settings(gate_settings)
    assert gate_set is not None and gate_set.sentences == 40
    return Counting(gate_set)


def poisoned_copy(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model with its classifier pushed towards B-PER everywhere: real, loadable, worse."""
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    bias = weights["classifier.bias"].clone()
    bias[1] += 4.0  # B-PER
    weights["classifier.bias"] = bias
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return folder


def _candidate(
    folder: Path, base_model: str = BASE, val_f1: float | None = 0.5, training_run_id: uuid.UUID | None = None
) -> Candidate:
    return Candidate(
        model_dir=folder, base_model=base_model, data_hash="d" * 64, data_ref={"train": "x.conll"},
        params={}, metrics={}, labels=["O"], val_f1=val_f1, test_f1=None, training_run_id=training_run_id,
    )  # fmt: skip


def _publish(  # type: ignore[no-untyped-def]
    session: Session,
    tmp_path: Path,
    folder: Path,
    counting: Counting | None,
    promote_first: bool = True,  # these tests start from an empty registry and want a first version
    **kw: Any,
):
    return publish_and_gate(
        session=session,
        artifacts_dir=tmp_path / "artifacts",
        candidate=_candidate(folder, **kw),
        policy="f1",
        redis_url="redis://127.0.0.1:1/0",  # no announcement needed here
        gate_set=counting.gate_set if counting else None,
        type_margin=0.02,
        default_base_model=BASE,
        settings=get_settings().model_copy(update={"gate_promote_first": promote_first}),
    )


@pytest.fixture
def empty_registry(db_session: Session) -> Session:
    """The test's transaction with every version retired: the test decides what is active."""
    for row in registry.list_versions(session=db_session):
        row.status = VersionStatus.retired
    db_session.flush()
    return db_session


def test_an_equally_good_candidate_is_promoted_and_the_active_score_is_cached(
    empty_registry: Session, tmp_path: Path, tiny_model_dir: Path, counting: Counting
) -> None:
    session = empty_registry
    first = _publish(session, tmp_path, tiny_model_dir, counting)
    assert first.promoted and first.reason == "no active version (NER_GATE_PROMOTE_FIRST=true)"
    second = _publish(session, tmp_path, tiny_model_dir, counting)  # the same weights: exactly as good
    assert second.promoted, second.reason
    v1, v2 = first.version.version, second.version.version
    # The first was scored once as a candidate; that score is its cached active score.
    assert counting.scored == [f"v{v1}", f"v{v2}"]
    gate_view = version_view(second.version).gate
    assert gate_view.decision == "promoted" and gate_view.candidate.version == v2
    assert gate_view.active.version == v1 and gate_view.candidate.f1 == gate_view.active.f1 > 0.3
    assert set(gate_view.candidate.per_type) == set(gate_view.active.per_type) >= {"PER", "LOC"}
    assert registry.get_active(session=session).version == v2


def test_a_worse_candidate_is_rejected_whatever_its_own_validation_f1_says(
    empty_registry: Session, tmp_path: Path, tiny_model_dir: Path, counting: Counting
) -> None:
    session = empty_registry
    active = _publish(session, tmp_path, tiny_model_dir, counting).version
    poisoned = poisoned_copy(tiny_model_dir, tmp_path / "poisoned")
    published = _publish(session, tmp_path, poisoned, counting, val_f1=1.0)
    assert published.decision.decision == "rejected" and not published.promoted
    assert "gate F1" in published.reason and f"active version {active.version}" in published.reason
    row = session.get(ModelVersion, published.version.version)
    assert row.status == VersionStatus.candidate and row.gate_decision == "rejected"
    assert (
        row.gate_score["f1"] < row.gate_active_score["f1"]
        and row.gate_active_score["version"] == active.version
    )
    detail = version_detail(row).gate
    assert detail.reason == row.gate_reason and detail.candidate.f1 == row.gate_score["f1"]
    assert registry.get_active(session=session).version == active.version


def test_a_run_with_its_own_base_model_or_without_a_gate_set_waits_for_an_admin(
    empty_registry: Session, tmp_path: Path, tiny_model_dir: Path, counting: Counting
) -> None:
    session = empty_registry
    active = _publish(session, tmp_path, tiny_model_dir, counting).version
    own_base = _publish(session, tmp_path, tiny_model_dir, counting, base_model="someone/else")
    assert own_base.decision.decision == "held" and "own base model" in own_base.reason
    # Still measured, so an admin sees both scores before activating it.
    assert own_base.decision.candidate_score["f1"] == own_base.decision.active_score["f1"]
    no_gate = _publish(session, tmp_path, tiny_model_dir, None, val_f1=1.0)
    assert no_gate.decision.decision == "held" and "no gate set" in no_gate.reason
    assert registry.get_active(session=session).version == active.version
    never = gate.decide(session=session, candidate=no_gate.version, policy="never")
    assert never.decision == "held" and "never" in never.reason


def test_an_empty_registry_keeps_a_first_version_as_a_candidate_unless_the_operator_chose(
    empty_registry: Session, tmp_path: Path, tiny_model_dir: Path, counting: Counting
) -> None:
    """Issue 12: with nothing active, a caller's first run does not go live on its own."""
    session = empty_registry
    # A caller's run (its key's), gate set or not: held for an admin, nothing becomes active.
    run = TrainingRun(status=RunStatus.succeeded, data={}, params={}, base_model=BASE, api_key_id=None)
    session.add(run)
    session.flush()
    for scorer in (counting, None):
        held = _publish(
            session, tmp_path, tiny_model_dir, scorer, promote_first=False, training_run_id=run.id
        )
        assert held.decision.decision == "held" and "NER_GATE_PROMOTE_FIRST" in held.reason
        assert registry.get_active(session=session) is None
    # Its own base model stays a candidate even where the operator lets a first version go live.
    own = _publish(session, tmp_path, tiny_model_dir, counting, base_model="someone/else")
    assert own.decision.decision == "held" and "own base model" in own.reason
    assert registry.get_active(session=session) is None
    # The service's own bootstrap run (NER_BOOTSTRAP_DATA, no key) is the operator's: it goes live.
    boot = TrainingRun(
        status=RunStatus.succeeded, data={}, params={"bootstrap": True}, base_model=BASE, api_key_id=None
    )
    session.add(boot)
    session.flush()
    first = _publish(
        session, tmp_path, tiny_model_dir, counting, promote_first=False, training_run_id=boot.id
    )
    assert first.promoted and "bootstrap" in first.reason
    assert registry.get_active(session=session).version == first.version.version


def test_the_active_score_is_measured_again_when_the_gate_set_changes(
    empty_registry: Session, tmp_path: Path, tiny_model_dir: Path, counting: Counting
) -> None:
    session = empty_registry
    first = _publish(session, tmp_path, tiny_model_dir, counting).version
    changed = Counting(replace(counting.inner, gate_hash="another gate set"))
    second = _publish(session, tmp_path, tiny_model_dir, changed).version
    assert changed.scored == [f"v{second.version}", f"v{first.version}"]
    assert session.get(ModelVersion, first.version).gate_score["gate_hash"] == "another gate set"


def test_a_candidate_the_engine_cannot_load_is_rejected(
    empty_registry: Session, tmp_path: Path, tiny_model_dir: Path, counting: Counting
) -> None:
    session = empty_registry
    _publish(session, tmp_path, tiny_model_dir, counting)
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (broken / "tokenizer.json").write_text("{}")
    published = _publish(session, tmp_path, broken, counting)
    assert (
        published.decision.decision == "rejected" and "scoring it on the gate set failed" in published.reason
    )


# --- the shipped model as version 1 ---------------------------------------------------------------


@pytest.fixture
def fresh_db() -> Iterator[Engine]:
    with migrated_database() as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def test_the_default_model_becomes_active_version_1_of_an_empty_registry_once(
    fresh_db: Engine, tmp_path: Path, tiny_model_dir: Path
) -> None:
    artifacts = tmp_path / "artifacts"
    barrier = threading.Barrier(2)
    results: list[object] = []

    def start_serving() -> None:
        with Session(fresh_db, expire_on_commit=False) as session:
            barrier.wait()  # two processes starting at the same moment
            results.append(seed.seed_version(session=session, artifacts_dir=artifacts, folder=tiny_model_dir))

    threads = [threading.Thread(target=start_serving) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in results) == 1
    with Session(fresh_db) as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
        active = registry.get_active(session=session)
        assert active.version == 1 and active.path == str(artifacts / "v1")
        assert active.labels[:3] == ["O", "B-PER", "I-PER"]
    validate_version_folder(artifacts / "v1")  # manifest written, every file intact
    assert sorted(p.name for p in artifacts.iterdir()) == ["v1"]  # no staging left behind
    # Registered once: a later start finds a version and does nothing.
    with Session(fresh_db) as session:
        assert seed.seed_version(session=session, artifacts_dir=artifacts, folder=tiny_model_dir) is None


def test_a_registry_with_versions_is_never_seeded(
    fresh_db: Engine, tmp_path: Path, tiny_model_dir: Path
) -> None:
    with Session(fresh_db, expire_on_commit=False) as session:
        published = publish_version(
            session=session, artifacts_dir=tmp_path / "a", candidate=_candidate(tiny_model_dir)
        )
        assert seed.seed_version(session=session, artifacts_dir=tmp_path / "a", folder=tiny_model_dir) is None
        assert [v.version for v in registry.list_versions(session=session)] == [published.version]
        assert registry.get_active(session=session) is None
