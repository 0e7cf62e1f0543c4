"""The first model of an empty registry: ``NER_MODEL`` when set, else the shipped default model, as version 1.

``NER_MODEL`` (a folder or Hub id) is imported (``importer.py``: downloaded when a Hub id, copied,
manifest and card written) and registered active, so the model a deployment started with is a version
it can roll back to (``NER_MODEL_IMPORT=false`` keeps it outside the registry while it is empty).
With no version registered and ``NER_MODEL`` unset, the folder of ``NER_DEFAULT_MODEL`` is copied into
``NER_ARTIFACTS_DIR/v1`` (manifest written, the same atomic publish as a training run's) and
registered active: it can then be compared, replaced and rolled back to like any other version.
Every serving process calls ``seed_registry`` at start; of two that start at once, one registers
version 1 and the other finds it taken and does nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.tables import ModelVersion
from shared.registry.errors import ImportRefused
from shared.registry.importer import folder_candidate, import_model
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


def default_candidate(folder: Path) -> Candidate:
    """The shipped folder as a registry candidate, with what its metrics.json and config.json say."""
    candidate = folder_candidate(folder, source=folder.name, data_ref={"default_model": folder.name})
    metrics = candidate.metrics
    # The shipped card names its base model; an empty one stays empty rather than naming the folder.
    return replace(candidate, base_model=str(metrics.get("base_model") or ""))


def seed_version(
    *, session: Session, artifacts_dir: Path, folder: Path, settings: Settings | None = None
) -> ModelVersion | None:
    """Register ``folder`` as active version 1 when the registry is empty; None when it is not."""
    if session.scalar(select(ModelVersion.version).limit(1)) is not None:
        return None
    row = publish_active_as(
        session=session,
        artifacts_dir=artifacts_dir,
        candidate=default_candidate(folder),
        version=SEED_VERSION,
        settings=settings,
    )
    if row is not None:
        log.info("registered the default model %s as active version %s", folder, SEED_VERSION)
    return row


def import_configured_model(*, session: Session, settings: Settings) -> ModelVersion | None:
    """Import ``NER_MODEL`` as active version 1 when the registry is empty; None when it is not."""
    if session.scalar(select(ModelVersion.version).limit(1)) is not None or not settings.model:
        return None
    try:
        imported = import_model(
            session=session,
            artifacts_dir=settings.artifacts_dir,
            source=settings.model,
            # Loaded by every process that serves it (and its load errors recorded on the version);
            # a process that only seeds does not import torch for it.
            verify=None,
            as_version=SEED_VERSION,
            settings=settings,
        )
    except ImportRefused as exc:
        log.warning("NER_MODEL %s was not imported into the registry: %s", settings.model, exc)
        return None
    if imported is not None:
        log.info("imported NER_MODEL %s as active version %s", settings.model, SEED_VERSION)
    return imported.version if imported is not None else None


def seed_registry(*, settings: Settings, env: Mapping[str, str] | None = None) -> int | None:
    """Process start hook: seed an empty registry with ``NER_MODEL`` (imported) or the default model.

    ``env`` (``ner up``'s environment for its children) may name another database or Redis. Returns
    the version registered (None when nothing was done). Never stops a process: a failure is logged
    and the process serves what the registry holds (or ``NER_MODEL`` outside it). Called by a
    gateway (no ``env``), ``NER_MODEL`` is imported in a background thread: a Hub download may take
    minutes, and the gateway answers probes (serving ``NER_MODEL`` as before) until version 1 is
    announced and swapped in.
    """
    folder = default_model_folder(settings)
    if settings.model and not settings.model_import:
        return None
    if not settings.model and folder is None:
        return None
    if settings.model and env is None:
        threading.Thread(
            target=_seed, kwargs={"settings": settings, "env": {}}, name="ner-model-import", daemon=True
        ).start()
        return None
    return _seed(settings=settings, env=env or {})


def _seed(*, settings: Settings, env: Mapping[str, str]) -> int | None:
    from shared.core.db import make_engine

    folder = default_model_folder(settings)
    engine = make_engine(env.get("NER_DATABASE_URL") or settings.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            if settings.model:
                row = import_configured_model(session=session, settings=settings)
            else:
                assert folder is not None
                row = seed_version(
                    session=session, artifacts_dir=settings.artifacts_dir, folder=folder, settings=settings
                )
    except SQLAlchemyError as exc:  # the database is down, not migrated, or locked by another process
        log.warning("could not seed the registry: %s", str(exc).splitlines()[0])
        return None
    except Exception:  # a failed copy or download must not stop the process: it serves what it has
        log.exception("could not seed the registry")
        return None
    finally:
        engine.dispose()
    if row is None:
        return None
    notify_active(redis_url=env.get("NER_REDIS_URL") or settings.redis_url, version=row.version)
    return row.version
