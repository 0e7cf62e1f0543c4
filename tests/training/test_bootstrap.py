"""Bootstrap: an empty registry without NER_MODEL queues a first run, and /predict/ says how far it is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.core.config import Settings, get_settings
from shared.core.db import make_engine
from shared.core.tables import RunStatus, TrainingRun
from shared.predict.errors import HOW_TO_GET_A_MODEL, NoModelAvailable
from shared.predict.serving import ModelProvider
from shared.registry import service as registry
from shared.training.bootstrap import BOOTSTRAP_KEY, ensure_bootstrap_run, prepare_local_stack
from shared.training.status import no_model_message
from tests.support.conll_subset import conll_subset
from tests.support.services import RedisServer, migrated_database


@pytest.fixture(scope="module")
def empty_db() -> Iterator[Engine]:
    """A database of its own: the registry must start empty, whatever other tests registered."""
    with migrated_database() as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def session(empty_db: Engine) -> Iterator[Session]:
    with Session(empty_db, expire_on_commit=False) as session:
        yield session
        session.rollback()
    with empty_db.begin() as conn:  # commits of the test are undone here
        conn.exec_driver_sql(
            "DELETE FROM training_epochs; DELETE FROM model_versions; DELETE FROM training_runs"
        )


@pytest.fixture(scope="module")
def bootstrap_settings(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    folder = conll_subset(get_settings().conll_dir, tmp_path_factory.mktemp("boot"), train=40, validation=10)
    return get_settings().model_copy(update={"model": None, "bootstrap_data": str(folder)})


def test_an_empty_registry_without_ner_model_queues_one_bootstrap_run(
    session: Session, bootstrap_settings: Settings
) -> None:
    run = ensure_bootstrap_run(session=session, settings=bootstrap_settings, enqueue=False)
    assert run is not None and run.status == RunStatus.queued and run.params[BOOTSTRAP_KEY]
    assert run.data == {"train": bootstrap_settings.bootstrap_data}
    assert run.base_model == bootstrap_settings.base_model
    again = ensure_bootstrap_run(session=session, settings=bootstrap_settings, enqueue=False)
    assert again is not None and again.id == run.id  # not a second run on the next `ner up`


def test_no_bootstrap_when_a_model_exists_or_nothing_to_train_on(
    session: Session, bootstrap_settings: Settings, tmp_path: Path
) -> None:
    with_model = bootstrap_settings.model_copy(update={"model": "dslim/bert-base-NER"})
    assert ensure_bootstrap_run(session=session, settings=with_model, enqueue=False) is None
    no_data = bootstrap_settings.model_copy(update={"bootstrap_data": None})
    assert ensure_bootstrap_run(session=session, settings=no_data, enqueue=False) is None
    registry.register_version(
        session=session, version=1, path=str(tmp_path), base_model="b", data_hash="h", data_ref={},
        params={}, metrics={}, labels=["O"], val_f1=None, test_f1=None,
    )  # fmt: skip
    assert ensure_bootstrap_run(session=session, settings=bootstrap_settings, enqueue=False) is None


def test_predict_says_the_first_model_is_training_and_how_far(
    session: Session, bootstrap_settings: Settings, empty_db: Engine
) -> None:
    factory = sessionmaker(bind=empty_db)
    provider = ModelProvider(bootstrap_settings, session_factory=factory, loader=lambda path: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(NoModelAvailable) as nothing:
        provider.active()
    assert str(nothing.value) == HOW_TO_GET_A_MODEL

    run = ensure_bootstrap_run(session=session, settings=bootstrap_settings, enqueue=False)
    assert run is not None
    assert "is queued to train the first model" in (no_model_message(session=session) or "")
    run.status, run.step, run.total_steps = RunStatus.running, 42, 100
    run.started_at = datetime.now(UTC) - timedelta(seconds=84)
    session.commit()
    with pytest.raises(NoModelAvailable) as training:
        provider.active()
    message = str(training.value)
    assert "the first model is training, 42% done" in message and "about 2 min left" in message


def test_ner_up_hook_queues_the_run_on_the_stacks_broker(
    empty_db: Engine, bootstrap_settings: Settings, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.delete("training")
    env = {
        "NER_DATABASE_URL": empty_db.url.render_as_string(hide_password=False),
        "NER_REDIS_URL": redis_server.url,
    }
    prepare_local_stack(settings=bootstrap_settings, env=env)
    with Session(empty_db) as session:
        runs = session.query(TrainingRun).all()
    assert len(runs) == 1
    messages = client.lrange("training", 0, -1)
    assert len(messages) == 1
    body = json.loads(messages[0])
    assert body["headers"]["task"] == "ner.train.run" and str(runs[0].id) in body["headers"]["argsrepr"]
    client.delete("training")
    with empty_db.begin() as conn:
        conn.exec_driver_sql("DELETE FROM training_runs")
