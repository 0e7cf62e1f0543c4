"""The artifact store on a real S3-compatible server (moto's) and on PostgreSQL: publish a version,
fetch it into an empty cache on another "node", load it; a tampered object is refused and reported.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.artifacts.errors import ArtifactMissing
from shared.artifacts.store import ObjectStore, open_store
from shared.artifacts.versions import MANIFEST, is_store_uri, parse_uri, sha256_file
from shared.core.config import Settings
from shared.core.db import make_engine
from shared.core.tables import ArtifactChunk, ModelVersion
from shared.predict.engine.errors import ModelLoadError
from shared.predict.serving import ModelProvider
from shared.registry import service as registry
from shared.registry.errors import CorruptVersion
from shared.registry.publish import Candidate, publish_active_as, publish_version
from tests.scaleout.conftest import S3_KEY, S3Server
from tests.support.services import migrated_database

SENTENCE = "Angela Merkel met Emmanuel Macron in Paris."


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with migrated_database() as url:
        yield url


@pytest.fixture(params=["s3", "postgresql"])
def node(request: pytest.FixtureRequest, s3_server: S3Server, database: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory of nodes' settings: same database and store, each its own state and cache folder."""
    if request.param == "s3":
        bucket = f"ner-{uuid.uuid4().hex[:12]}"
        s3_server.create_bucket(bucket)
        store = {
            "artifacts_url": f"s3://{bucket}/deploy-a", "s3_endpoint_url": s3_server.endpoint,
            "s3_region": "us-east-1", "s3_access_key_id": S3_KEY, "s3_secret_access_key": S3_KEY,
        }  # fmt: skip
    else:
        store = {"artifacts_url": "postgresql"}

    def make(name: str) -> Settings:
        # Its own artifacts folder too: the session's NER_ARTIFACTS_DIR (other tests' versions) is not it.
        return Settings(
            database_url=database, state_dir=tmp_path / name, artifacts_dir=tmp_path / name / "models",
            redis_url="redis://127.0.0.1:1/0", model_poll_seconds=0.2, **store,
        )  # fmt: skip

    return make


def _card(folder: Path, version: int) -> None:
    # Every version its own card, as published versions have: no two share a manifest.
    (folder / "README.md").write_text(f"# version {version}\n")


def _candidate(folder: Path) -> Candidate:
    return Candidate(
        model_dir=folder, base_model="tiny", data_hash="h" * 64, data_ref={}, params={}, metrics={},
        labels=["O"], val_f1=0.5, test_f1=None, write_extras=_card,
    )  # fmt: skip


def _publish(settings: Settings, folder: Path, *, active: bool = False) -> ModelVersion:
    engine = make_engine(settings.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            if active:
                number = registry.next_version_number(session=session)
                row = publish_active_as(
                    session=session, artifacts_dir=settings.artifacts_dir, candidate=_candidate(folder),
                    version=number, settings=settings,
                )  # fmt: skip
                assert row is not None
                return row
            return publish_version(
                session=session,
                artifacts_dir=settings.artifacts_dir,
                candidate=_candidate(folder),
                settings=settings,
            )
    finally:
        engine.dispose()


def _provider(settings: Settings) -> ModelProvider:
    engine = make_engine(settings.database_url)
    return ModelProvider(settings, session_factory=lambda: Session(engine, expire_on_commit=False))


def _tamper(store: ObjectStore, uri: str, name: str) -> None:
    prefix, _ = parse_uri(store, uri)
    data = bytearray(store.get_bytes(f"{prefix}/{name}"))
    data[-1] ^= 0xFF
    store.put_bytes(f"{prefix}/{name}", bytes(data))


def test_a_version_travels_through_the_store_into_another_nodes_empty_cache(
    node, tiny_model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    trainer, gateway = node("trainer"), node("gateway")
    row = _publish(trainer, tiny_model_dir, active=True)
    # The registry names the object, pinned by the manifest's hash; no folder of the trainer's.
    assert is_store_uri(row.path) and row.path.startswith(open_store(trainer).url + f"models/v{row.version}")
    assert not (trainer.artifacts_dir / f"v{row.version}").exists()
    assert not gateway.artifacts_cache_dir.exists()

    provider = _provider(gateway)
    served = provider.refresh()  # what the background watcher does before the hot swap
    assert served is not None and served.version == row.version
    entities = served.engine.predict([SENTENCE])[0]
    assert {e.word for e in entities} >= {"Angela Merkel", "Paris"}
    for entity in entities:
        assert SENTENCE[entity.start : entity.end] == entity.word

    # The gateway's copy sits in its own cache, under the manifest's sha256, file for file the same.
    cached = gateway.artifacts_cache_dir / row.path.rsplit("=", 1)[-1]
    assert cached.is_dir() and sha256_file(cached / MANIFEST) == cached.name
    assert sha256_file(cached / "model.safetensors") == sha256_file(tiny_model_dir / "model.safetensors")
    # The publisher cached what it published: it never downloads its own version.
    assert (trainer.artifacts_cache_dir / cached.name / "model.safetensors").is_file()


def test_a_tampered_object_is_refused_reported_and_never_served(node, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    trainer, worker = node("trainer"), node("worker")
    good = _publish(trainer, tiny_model_dir, active=True)
    provider = _provider(worker)
    assert provider.refresh().version == good.version  # type: ignore[union-attr]

    bad = _publish(trainer, tiny_model_dir)
    store = open_store(trainer)
    _tamper(store, bad.path, "model.safetensors")

    # Activation checks the objects too: 409, nothing changes.
    engine = make_engine(trainer.database_url)
    try:
        with Session(engine) as session:
            with pytest.raises(CorruptVersion, match=r"model\.safetensors is corrupt") as refused:
                registry.activate(session=session, version=bad.version, settings=node("admin"))
            assert refused.value.status_code == 409
            session.rollback()
            assert registry.get_active(session=session).version == good.version  # type: ignore[union-attr]
            # Forced active behind the check's back (an operator editing rows): the loaders refuse it.
            session.execute(
                ModelVersion.__table__.update()
                .where(ModelVersion.version == good.version)
                .values(status="retired")
            )
            session.execute(
                ModelVersion.__table__.update()
                .where(ModelVersion.version == bad.version)
                .values(status="active")
            )
            session.commit()

        served = provider.refresh()
        assert served is not None and served.version == good.version  # the last good one keeps answering
        assert provider.status().startswith(f"degraded: version {bad.version} could not be loaded")
        with Session(engine) as session:
            error = session.scalar(select(ModelVersion.load_error).where(ModelVersion.version == bad.version))
        assert error is not None and "model.safetensors is corrupt (checksum mismatch)" in error
        assert "s3://" not in error and "postgresql:" not in error  # versions, never store locations
        fresh = _provider(node("fresh"))  # a node with nothing cached fetches, checks, refuses
        with pytest.raises(ModelLoadError, match="checksum mismatch"):
            fresh.get(bad.version)
        assert not list((node("fresh").artifacts_cache_dir).glob("*/model.safetensors"))

        # A tampered manifest (a file listed with a forged hash) is refused by the pin in the registry.
        forged = _publish(trainer, tiny_model_dir)
        prefix, _ = parse_uri(store, forged.path)
        manifest = json.loads(store.get_bytes(f"{prefix}/{MANIFEST}"))
        manifest["files"]["config.json"] = "0" * 64
        store.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest).encode())
        with pytest.raises(CorruptVersion, match=r"manifest\.json does not match the registry"):
            registry.verify_folder(path=forged.path, settings=node("third"))
    finally:
        engine.dispose()


def test_a_version_missing_from_the_store_is_409_and_objects_are_chunked(node, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    trainer = node("trainer")
    row = _publish(trainer, tiny_model_dir)
    store = open_store(trainer)
    prefix, _ = parse_uri(store, row.path)
    keys = sorted(store.keys(prefix))
    assert f"{prefix}/{MANIFEST}" in keys and f"{prefix}/model.safetensors" in keys
    if trainer.artifacts_url == "postgresql":
        engine = make_engine(trainer.database_url)
        with Session(engine) as session:
            chunks = session.scalar(
                select(ArtifactChunk.seq)
                .where(ArtifactChunk.key == f"{prefix}/model.safetensors")
                .order_by(ArtifactChunk.seq.desc())
                .limit(1)
            )
        engine.dispose()
        size = (tiny_model_dir / "model.safetensors").stat().st_size
        assert chunks == (size - 1) // (4 * 1024 * 1024)  # several bounded rows, not one huge value
    store.delete_prefix(prefix)
    with pytest.raises(ArtifactMissing):
        store.get_bytes(f"{prefix}/{MANIFEST}")
    with pytest.raises(CorruptVersion, match="not in the artifact store") as missing:
        registry.verify_folder(path=row.path, settings=node("elsewhere"))
    assert missing.value.status_code == 409
