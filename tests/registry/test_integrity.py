"""Model integrity end to end: what activation accepts, what loaders accept, and the activation race.

Real Postgres and Redis; the end-to-end test runs a real gateway process (`ner serve`) on the tiny
fine-tuned model, so "the old version still answers" is observed over HTTP.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session

from shared.core.tables import ModelVersion, VersionStatus
from shared.registry import service as registry
from shared.registry.errors import ActivationConflict, CorruptVersion
from shared.registry.manifest import validate_version_folder, write_manifest
from shared.registry.notify import notify_active
from tests.support.model_folders import fake_model_folder
from tests.support.processes import start_gateway, wait_until

SENTENCE = "Angela Merkel met Emmanuel Macron in Paris."


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _pickle_only(folder: Path) -> Path:
    """A folder as a pickle checkpoint arrives: config and pytorch_model.bin, no safetensors, no manifest."""
    fake_model_folder(folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    return folder


def _register(session: Session, number: int, folder: Path) -> None:
    session.add(ModelVersion(version=number, path=str(folder), status=VersionStatus.candidate))
    session.flush()


# --- what activation accepts -------------------------------------------------------------------


def _tampered(folder: Path) -> Path:
    write_manifest(fake_model_folder(folder))
    _flip_last_byte(folder / "model.safetensors")
    return folder


def _no_manifest(folder: Path) -> Path:
    return fake_model_folder(folder)


def _pickle_beside_safetensors(folder: Path) -> Path:
    write_manifest(fake_model_folder(folder))
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    return folder


def _unlisted_file(folder: Path) -> Path:
    write_manifest(fake_model_folder(folder))
    (folder / "extra.json").write_text("{}")
    return folder


def _escaping_manifest(folder: Path) -> Path:
    write_manifest(fake_model_folder(folder))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _tampered_manifest_and_weights(folder: Path) -> Path:
    """An attacker who rewrites the weights but not the manifest's hash of them."""
    write_manifest(fake_model_folder(folder))
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return folder


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_pickle_only, "pickle weights (pytorch_model.bin)"),
        (_pickle_beside_safetensors, "pickle weights (pytorch_model.bin)"),
        (_tampered, "model.safetensors is corrupt (checksum mismatch)"),
        (_tampered_manifest_and_weights, "model.safetensors is corrupt (checksum mismatch)"),
        (_no_manifest, "manifest.json is missing"),
        (_unlisted_file, "files not in manifest.json: extra.json"),
        (_escaping_manifest, "outside the folder"),
    ],
)
def test_activation_refuses_what_cannot_be_trusted_and_keeps_the_active_version(
    db_session: Session, tmp_path: Path, make, needle: str
) -> None:  # type: ignore[no-untyped-def]
    base = (db_session.scalar(select(ModelVersion.version).order_by(ModelVersion.version.desc())) or 0) + 1
    good = fake_model_folder(tmp_path / "good")
    write_manifest(good)
    _register(db_session, base, good)
    registry.activate(session=db_session, version=base)
    _register(db_session, base + 1, make(tmp_path / "bad"))
    with pytest.raises(CorruptVersion) as refused:
        registry.activate(session=db_session, version=base + 1)
    assert needle in str(refused.value) and "the active version is unchanged" in str(refused.value)
    assert refused.value.status_code == 409
    assert str(tmp_path) not in str(refused.value)  # the message reaches API callers: no server path
    assert registry.get_active(session=db_session).version == base


def test_a_published_folder_verifies(tmp_path: Path) -> None:
    folder = fake_model_folder(tmp_path / "v")
    write_manifest(folder)
    validate_version_folder(folder)  # raises on any problem


# --- two activations at once ---------------------------------------------------------------------


@pytest.fixture
def committed_versions(pg_engine: Engine, tmp_path: Path) -> Iterator[list[int]]:
    """Three committed versions (the first active), restored afterwards; threads need real commits."""
    with Session(pg_engine) as session:
        before = registry.get_active(session=session)
        first = (session.scalar(select(ModelVersion.version).order_by(ModelVersion.version.desc())) or 0) + 1
        numbers = [first, first + 1, first + 2]
        for number in numbers:
            folder = fake_model_folder(tmp_path / f"v{number}")
            write_manifest(folder)
            _register(session, number, folder)
        registry.activate(session=session, version=first)
        session.commit()
    yield numbers
    with Session(pg_engine) as session:
        session.execute(delete(ModelVersion).where(ModelVersion.version.in_(numbers)))
        if before is not None:
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.version == before.version)
                .values(status=VersionStatus.active)
            )
        session.commit()


def test_two_simultaneous_activations_one_wins_the_other_gets_409(
    pg_engine: Engine, committed_versions: list[int]
) -> None:
    _, second, third = committed_versions
    winner = Session(pg_engine)
    registry.activate(session=winner, version=second)  # flushed: holds the old active row's lock
    outcome: dict[str, object] = {}

    def loser() -> None:
        with Session(pg_engine) as session:
            try:
                registry.activate(session=session, version=third)
                session.commit()
                outcome["result"] = "activated"
            except Exception as exc:
                outcome["result"] = exc

    thread = threading.Thread(target=loser)
    thread.start()
    # The second activation must be waiting on the first one's row lock before the first commits.
    with pg_engine.connect() as conn:
        wait_until(
            lambda: (
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    )
                ).scalar_one()
                > 0
            ),
            20,
            "the second activation to wait for the first",
        )
    winner.commit()
    winner.close()
    thread.join(timeout=30)
    result = outcome["result"]
    assert isinstance(result, ActivationConflict), result
    assert result.status_code == 409 and f"version {third}" in str(result)
    with Session(pg_engine) as session:
        active = session.scalars(
            select(ModelVersion).where(ModelVersion.status == VersionStatus.active)
        ).all()
        assert [row.version for row in active] == [second]


def test_concurrent_activations_through_threads_never_fail_otherwise(
    pg_engine: Engine, committed_versions: list[int]
) -> None:
    """Many threads activating at once (no choreography): every one succeeds or gets a 409."""
    barrier = threading.Barrier(6)
    results: list[object] = []

    def activate(version: int) -> None:
        with Session(pg_engine) as session:
            barrier.wait()
            try:
                registry.activate(session=session, version=version)
                session.commit()
                results.append(version)
            except ActivationConflict as exc:
                results.append(exc)
            except Exception as exc:  # anything else would be a 500
                results.append(("unexpected", exc))

    threads = [threading.Thread(target=activate, args=(v,)) for v in committed_versions[1:] * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 6 and not [r for r in results if isinstance(r, tuple)], results
    with Session(pg_engine) as session:
        active = session.scalars(
            select(ModelVersion).where(ModelVersion.status == VersionStatus.active)
        ).all()
        assert len(active) == 1 and active[0].version in committed_versions[1:]


# --- a real gateway: refused at activation and at load, the old version still answering ---------


def _predict_version(base_url: str) -> int | None:
    response = httpx.post(f"{base_url}/predict/", json={"text": SENTENCE}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["entities"], "the good model finds entities in this sentence"
    return response.json()["model_version"]


def _readyz(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/readyz", timeout=10)


@pytest.mark.slow
def test_tampered_and_pickle_versions_never_replace_the_good_one(
    service_env: dict[str, str], tiny_model_dir: Path, tmp_path: Path, log_dir: Path, pg_engine: Engine
) -> None:
    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_model_dir, folder)
        write_manifest(folder)
        return folder

    with Session(pg_engine) as session:
        before = registry.get_active(session=session)
        good = (session.scalar(select(ModelVersion.version).order_by(ModelVersion.version.desc())) or 0) + 1
        pickle_v, tampered_v, late_v = good + 1, good + 2, good + 3
        _register(session, good, copy("good"))
        pickle_dir = tmp_path / "pickle"
        shutil.copytree(tiny_model_dir, pickle_dir)
        weights = load_file(str(pickle_dir / "model.safetensors"))
        (pickle_dir / "model.safetensors").unlink()
        torch.save(weights, pickle_dir / "pytorch_model.bin")
        _register(session, pickle_v, pickle_dir)
        tampered = copy("tampered")
        _flip_last_byte(tampered / "model.safetensors")
        _register(session, tampered_v, tampered)
        _register(session, late_v, copy("late"))
        registry.promote(session=session, version=good, redis_url=service_env["NER_REDIS_URL"])
    numbers = [good, pickle_v, tampered_v, late_v]
    gateway = None
    try:
        gateway, base_url = start_gateway(service_env, log_dir)
        wait_until(lambda: _readyz(base_url).status_code == 200, 120, "the good model to load", gateway)
        assert _predict_version(base_url) == good

        # Refused at activation: nothing changes, the good version keeps answering.
        for version, needle in ((pickle_v, "pickle weights"), (tampered_v, "checksum mismatch")):
            response = httpx.post(f"{base_url}/models/{version}/activate", timeout=30)
            assert response.status_code == 409, response.text
            assert needle in response.json()["detail"] and str(tmp_path) not in response.json()["detail"]
            assert httpx.get(f"{base_url}/models", timeout=10).json()["active"] == good
            assert _predict_version(base_url) == good

        # Tampered after activation (the files changed under the registry): the gateway verifies
        # again when it loads, refuses, keeps the good model and says so.
        with Session(pg_engine) as session:
            registry.activate(session=session, version=late_v)
            _flip_last_byte(tmp_path / "late" / "model.safetensors")
            session.commit()
        notify_active(redis_url=service_env["NER_REDIS_URL"], version=late_v)

        def reported() -> bool:
            listed = httpx.get(f"{base_url}/models", timeout=10).json()["versions"]
            return any(v["version"] == late_v and v["load_error"] for v in listed)

        wait_until(reported, 60, "the load failure in GET /models", gateway)
        late_row = next(
            v
            for v in httpx.get(f"{base_url}/models", timeout=10).json()["versions"]
            if v["version"] == late_v
        )
        assert "checksum mismatch" in late_row["load_error"] and str(tmp_path) not in late_row["load_error"]
        ready = _readyz(base_url)
        assert ready.status_code == 200
        assert f"version {late_v} could not be loaded; serving version {good}" in ready.text
        assert str(tmp_path) not in ready.text
        assert _predict_version(base_url) == good
        metrics = httpx.get(f"{base_url}/metrics", timeout=10)  # NER_AUTH=off here: no key needed
        assert metrics.status_code == 200 and f'load_failed="{late_v}"' in metrics.text

        # A restarted gateway has nothing loaded: it falls back to the last good version.
        gateway.stop()
        gateway, base_url = start_gateway(service_env, log_dir)
        wait_until(lambda: _readyz(base_url).status_code == 200, 120, "the fallback model to load", gateway)
        assert _predict_version(base_url) == good
        assert "degraded" in _readyz(base_url).json()["checks"]["model"]
    finally:
        if gateway is not None:
            gateway.stop()
        with Session(pg_engine) as session:
            session.execute(delete(ModelVersion).where(ModelVersion.version.in_(numbers)))
            if before is not None:
                session.execute(
                    update(ModelVersion)
                    .where(ModelVersion.version == before.version)
                    .values(status=VersionStatus.active)
                )
            session.commit()


def test_the_engine_never_loads_pickle_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    """NER_MODEL given a folder with only pytorch_model.bin: refused, not deserialised."""
    from shared.predict.engine import NerEngine
    from shared.predict.engine.errors import ModelLoadError

    folder = tmp_path / "pickle"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        NerEngine.load(folder)


def test_a_worker_verifies_a_pinned_version_before_anything_deserialises_it(
    service_env: dict[str, str], pg_engine: Engine, tmp_path: Path
) -> None:
    """What a bulk job's worker does with its pinned version: the provider checks the folder first,
    so a tampered or pickle-only version never reaches the loader (torch.load / from_pretrained)."""
    from shared.core.config import get_settings
    from shared.predict.engine.errors import ModelLoadError
    from shared.predict.serving import ModelProvider

    loaded: list[str] = []
    provider = ModelProvider(
        get_settings(),
        session_factory=lambda: Session(pg_engine),
        loader=lambda path: loaded.append(path) or object(),  # type: ignore[func-returns-value,return-value]
    )
    good = fake_model_folder(tmp_path / "good")
    write_manifest(good)
    tampered = _tampered(tmp_path / "tampered")
    pickled = _pickle_only(tmp_path / "pickled")
    with Session(pg_engine) as session:
        first = (session.scalar(select(ModelVersion.version).order_by(ModelVersion.version.desc())) or 0) + 1
        numbers = [first, first + 1, first + 2]
        for number, folder in zip(numbers, (good, tampered, pickled), strict=True):
            _register(session, number, folder)
        session.commit()
    try:
        with pytest.raises(ModelLoadError, match="checksum mismatch"):
            provider.get(first + 1)
        with pytest.raises(ModelLoadError, match="pickle weights"):
            provider.get(first + 2)
        assert loaded == []  # neither folder was handed to the loader
        assert provider.get(first).version == first and loaded == [str(good)]
    finally:
        with Session(pg_engine) as session:
            session.execute(delete(ModelVersion).where(ModelVersion.version.in_(numbers)))
            session.commit()
