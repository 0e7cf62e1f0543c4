"""The shipped default model becomes version 1 of an empty registry, so a fresh install answers at once.

With no version registered and ``NER_MODEL`` unset, the folder of ``NER_DEFAULT_MODEL`` is copied into
``NER_ARTIFACTS_DIR/v1`` (manifest written, the same atomic publish as a training run's) and
registered active: it can then be compared, replaced and rolled back to like any other version.
Every serving process calls ``seed_registry`` at start; of two that start at once, one registers
version 1 and the other finds it taken and does nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.tables import ModelVersion
from shared.registry.notify import notify_active
from shared.registry.publish import Candidate, publish_active_as

log = logging.getLogger(__name__)

SEED_VERSION = 1
DISABLED = {"", "none", "off", "false"}


def default_model_folder(settings: Settings) -> Path | None:
    """The shipped model's folder (``NER_DEFAULT_MODEL``); None when disabled or absent."""
    value = settings.default_model
    if value is None or str(value).strip().lower() in DISABLED:
        return None
    folder = Path(value).expanduser()
    return folder if (folder / "config.json").is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _f1(report: Any) -> float | None:
    value = report.get("f1") if isinstance(report, dict) else None
    return float(value) if isinstance(value, int | float) else None


def default_candidate(folder: Path) -> Candidate:
    """The shipped folder as a registry candidate, with what its metrics.json and config.json say."""
    metrics = _read_json(folder / "metrics.json")
    config = _read_json(folder / "config.json")
    id2label = config.get("id2label") or {}
    labels = [id2label[key] for key in sorted(id2label, key=int)] if isinstance(id2label, dict) else []
    engine = metrics.get("engine") if isinstance(metrics.get("engine"), dict) else {}

    def split_f1(split: str) -> float | None:
        # The engine's score (one sentence per text) when the card has it, else the training loop's.
        measured = _f1((engine.get(split) or {}).get("sentences"))
        return measured if measured is not None else _f1(metrics.get(split))

    data = metrics.get("data")
    return Candidate(
        model_dir=folder,
        base_model=str(metrics.get("base_model") or ""),
        data_hash=str(metrics.get("data_hash") or "")[:64],
        data_ref={**(data if isinstance(data, dict) else {}), "default_model": folder.name},
        params=metrics.get("params") if isinstance(metrics.get("params"), dict) else {},
        metrics=metrics,
        labels=labels,
        val_f1=split_f1("validation"),
        test_f1=split_f1("test"),
    )


def seed_version(*, session: Session, artifacts_dir: Path, folder: Path) -> ModelVersion | None:
    """Register ``folder`` as active version 1 when the registry is empty; None when it is not."""
    if session.scalar(select(ModelVersion.version).limit(1)) is not None:
        return None
    row = publish_active_as(
        session=session,
        artifacts_dir=artifacts_dir,
        candidate=default_candidate(folder),
        version=SEED_VERSION,
    )
    if row is not None:
        log.info("registered the default model %s as active version %s", folder, SEED_VERSION)
    return row


def seed_registry(*, settings: Settings, env: Mapping[str, str] | None = None) -> int | None:
    """Process start hook: seed an empty registry with the default model unless ``NER_MODEL`` is set.

    ``env`` (``ner up``'s environment for its children) may name another database or Redis. Returns
    the version registered (None when nothing was done). Never stops a process: a failure is logged
    and the process serves what the registry holds.
    """
    folder = default_model_folder(settings)
    if settings.model or folder is None:
        return None
    from shared.core.db import make_engine

    env = env or {}
    engine = make_engine(env.get("NER_DATABASE_URL") or settings.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            row = seed_version(session=session, artifacts_dir=settings.artifacts_dir, folder=folder)
    except SQLAlchemyError as exc:  # the database is down, not migrated, or locked by another process
        log.warning("could not seed the registry with the default model: %s", str(exc).splitlines()[0])
        return None
    finally:
        engine.dispose()
    if row is None:
        return None
    notify_active(redis_url=env.get("NER_REDIS_URL") or settings.redis_url, version=row.version)
    return row.version
