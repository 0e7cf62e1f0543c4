"""Model versions: resolve the active one, list, activate (also a roll-back), notify."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.models import ModelVersion, VersionStatus

log = logging.getLogger(__name__)

# Redis pub/sub channel on which a newly active version number is announced.
ACTIVE_CHANNEL = "ner:active-model"


class RegistryError(Exception):
    """A registry operation that cannot be done; the message says why."""


class VersionNotFound(RegistryError):
    pass


class CorruptVersion(RegistryError):
    """The version's folder is missing or does not hold a loadable model."""


# Written into every published version folder: the files and their sha256, checked on activation.
MANIFEST = "manifest.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def get_active(*, session: Session) -> ModelVersion | None:
    """The active version, or None while the registry is empty."""
    return session.scalar(select(ModelVersion).where(ModelVersion.status == VersionStatus.active))


def get_version(*, session: Session, version: int) -> ModelVersion | None:
    """One version by number."""
    return session.get(ModelVersion, version)


def list_versions(*, session: Session) -> list[ModelVersion]:
    """All versions, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.version.desc())))


def next_version_number(*, session: Session) -> int:
    """N+1 for the highest registered version N (1 for an empty registry)."""
    return (session.scalar(select(func.max(ModelVersion.version))) or 0) + 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict[str, str]:
    """Record every file of a version folder with its sha256 (activation checks them)."""
    files = {
        str(path.relative_to(folder)): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=2, sort_keys=True))
    return files


def validate_version_folder(path: str | Path) -> None:
    """Raise CorruptVersion unless ``path`` holds a complete model: config with labels, intact weights."""
    folder = Path(path)
    if not folder.is_dir():
        raise CorruptVersion(f"model folder {folder} is missing")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CorruptVersion(f"model folder {folder}: config.json is missing or unreadable ({exc})") from None
    if not isinstance(config, dict) or not config.get("id2label"):
        raise CorruptVersion(f"model folder {folder}: config.json has no id2label")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CorruptVersion(f"model folder {folder}: no weights file ({' or '.join(WEIGHT_FILES)})")
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        try:
            files = json.loads(manifest_path.read_text())["files"]
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptVersion(f"model folder {folder}: {MANIFEST} is unreadable ({exc})") from None
        for name, expected in files.items():
            file = folder / name
            if not file.is_file():
                raise CorruptVersion(f"model folder {folder}: {name} is missing")
            if file_sha256(file) != expected:
                raise CorruptVersion(f"model folder {folder}: {name} is corrupt (checksum mismatch)")
    elif (folder / "model.safetensors").is_file():
        # A folder registered without a manifest: at least the safetensors header must parse.
        from safetensors import safe_open

        try:
            with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types for truncated files
            raise CorruptVersion(f"model folder {folder}: model.safetensors is corrupt ({exc})") from None


def register_version(
    *,
    session: Session,
    version: int,
    path: str,
    base_model: str,
    data_hash: str,
    data_ref: dict[str, Any],
    params: dict[str, Any],
    metrics: dict[str, Any],
    labels: list[str],
    val_f1: float | None,
    test_f1: float | None,
    training_run_id: Any = None,
) -> ModelVersion:
    """Insert a candidate version row (flushed, not committed)."""
    row = ModelVersion(
        version=version,
        status=VersionStatus.candidate,
        path=path,
        base_model=base_model,
        data_hash=data_hash,
        data_ref=data_ref,
        params=params,
        metrics=metrics,
        labels=labels,
        val_f1=val_f1,
        test_f1=test_f1,
        training_run_id=training_run_id,
    )
    session.add(row)
    session.flush()
    return row


def gate(*, session: Session, candidate: ModelVersion, policy: str) -> tuple[bool, str]:
    """Whether ``candidate`` should become active under ``policy`` (``f1`` or ``never``), and why."""
    if policy == "never":
        return False, "promote policy is 'never': left as a candidate"
    if policy != "f1":
        raise RegistryError(f"unknown promote policy {policy!r}")
    active = get_active(session=session)
    if active is None:
        return True, "no active version"
    if active.val_f1 is None:
        return True, f"active version {active.version} has no validation F1"
    if candidate.val_f1 is not None and candidate.val_f1 >= active.val_f1:
        return (
            True,
            f"validation F1 {candidate.val_f1:.4f} >= {active.val_f1:.4f} of version {active.version}",
        )
    shown = "none" if candidate.val_f1 is None else f"{candidate.val_f1:.4f}"
    return False, f"validation F1 {shown} < {active.val_f1:.4f} of active version {active.version}"


def activate(*, session: Session, version: int) -> ModelVersion:
    """Make ``version`` the only active version; the previous one is retired.

    The folder is checked first: a missing or corrupt one raises CorruptVersion and nothing changes.
    Flushed, not committed; call ``notify_active`` after the commit.
    """
    target = session.get(ModelVersion, version, with_for_update=True)
    if target is None:
        raise VersionNotFound(f"model version {version} does not exist")
    validate_version_folder(target.path)
    if target.status == VersionStatus.active:
        return target
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.status == VersionStatus.active)
        .values(status=VersionStatus.retired)
    )
    # Flush the retirement first: the partial unique index allows one active row at a time.
    session.flush()
    target.status = VersionStatus.active
    target.activated_at = datetime.now(UTC)
    session.flush()
    return target


def notify_active(*, redis_url: str, version: int) -> bool:
    """Announce the active version on ACTIVE_CHANNEL so gateways and workers swap now.

    Best effort: listeners also poll the database, so a broker hiccup only delays the swap.
    """
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.publish(ACTIVE_CHANNEL, json.dumps({"version": version}))
        finally:
            client.close()
        return True
    except (redis.RedisError, OSError) as exc:
        log.warning("could not announce active version %s on %s: %s", version, ACTIVE_CHANNEL, exc)
        return False


def promote(*, session: Session, version: int, redis_url: str) -> ModelVersion:
    """Activate ``version``, commit, and announce it."""
    row = activate(session=session, version=version)
    session.commit()
    notify_active(redis_url=redis_url, version=version)
    return row
