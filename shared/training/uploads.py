"""Training data files sent to the gateway: stored under the uploads folder, referenced in POST /train.

Each upload belongs to the key that sent it (a row in ``training_uploads``): only that key (or an
admin) may reference it, it counts against the key's quota (NER_TRAIN_UPLOAD_QUOTA_BYTES), and
the clean-up schedule deletes it after NER_TRAIN_UPLOAD_RETENTION_DAYS.

An upload is referenced as ``upload:<id>/<name>`` (the response's ``reference``), the same on
every host; the older forms, ``uploads/<id>/<name>`` relative to the first data root and an absolute
path into this host's uploads folder, name the same upload (``upload_key_of``). Whether it exists
and whose it is, the database says (``usable_upload``), never a path the caller chose.

With a remote artifact store (NER_ARTIFACTS_URL) the file is also stored there, under
``uploads/<id>/<name>``: a gateway that did not receive it accepts it on the store's word, and a
trainer on another host fetches it to the same place under its own uploads folder before training
(``fetch_uploads``), checked against the sha256 recorded here. With the folder store every host
shares the uploads folder (the first data root) instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shared.artifacts.errors import ArtifactError, ArtifactMissing
from shared.artifacts.store import UPLOADS_PREFIX, open_store
from shared.artifacts.versions import sha256_file
from shared.core.config import Settings
from shared.core.tables import TrainingUpload, utcnow
from shared.keys.owner import Owner
from shared.training.errors import DataError, UploadQuotaExceeded, UploadRejected, UploadTooLarge
from shared.training.references import UPLOAD_KEY, UPLOAD_SCHEME, DataSpec, upload_key

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StoredUpload:
    path: Path
    bytes: int
    sha256: str
    filename: str | None  # as the caller named it

    @property
    def reference(self) -> str:
        """How POST /train names it on any host: ``upload:<id>/<name>``."""
        return f"{UPLOAD_SCHEME}{self.path.parent.name}/{self.path.name}"


def shown_name(filename: str | None) -> str | None:
    """The caller's file name as people see it: printable characters, at most 200 (never a path)."""
    cleaned = "".join(ch for ch in (filename or "") if ch.isprintable()).strip()
    return cleaned[:200] or None


def safe_name(filename: str | None) -> str:
    """The file's base name with anything but letters, digits, '.', '_' and '-' replaced."""
    return _UNSAFE.sub("_", (filename or "data").rsplit("/", 1)[-1]).strip("._") or "data"


def bytes_used(*, session: Session, key_id: int | None) -> int:
    """What ``key_id``'s stored uploads add up to."""
    total = session.scalar(
        select(func.coalesce(func.sum(TrainingUpload.bytes), 0)).where(
            TrainingUpload.api_key_id.is_not_distinct_from(key_id)
        )
    )
    return int(total or 0)


def store_upload(
    *, session: Session, settings: Settings, owner: Owner, filename: str | None, stream: BinaryIO
) -> StoredUpload:
    """Copy ``stream`` into a folder of its own under the uploads folder, owned by ``owner``'s key.

    Over NER_TRAIN_UPLOAD_MAX_BYTES: 413; over the key's quota: 429. Nothing is kept on refusal.
    """
    quota_left = None
    if owner.key_id is not None:  # auth off: no quota
        quota_left = settings.train_upload_quota_bytes - bytes_used(session=session, key_id=owner.key_id)
        if quota_left <= 0:
            raise UploadQuotaExceeded(_quota_message(settings))
    name = safe_name(filename)
    folder = settings.uploads_dir / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    digest = hashlib.sha256()
    size = 0
    try:
        with target.open("wb") as handle:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > settings.train_upload_max_bytes:
                    limit = settings.train_upload_max_bytes
                    raise UploadTooLarge(f"upload larger than {limit} bytes (NER_TRAIN_UPLOAD_MAX_BYTES)")
                if quota_left is not None and size > quota_left:
                    raise UploadQuotaExceeded(_quota_message(settings))
                digest.update(chunk)
                handle.write(chunk)
        if size == 0:
            raise UploadRejected(f"{name}: the uploaded file is empty")
        store = open_store(settings)
        if not store.is_local:  # trainers on other hosts read it from the store
            store.put_file(_object_key(target.relative_to(settings.uploads_dir)), target)
        session.add(
            TrainingUpload(
                api_key_id=owner.key_id,
                path=str(target.relative_to(settings.uploads_dir)),
                filename=shown_name(filename),
                bytes=size,
                sha256=digest.hexdigest(),
                expires_at=utcnow() + timedelta(days=settings.train_upload_retention_days),
            )
        )
        session.commit()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        _delete_stored(settings, folder.name)
        raise
    return StoredUpload(path=target, bytes=size, sha256=digest.hexdigest(), filename=shown_name(filename))


def _quota_message(settings: Settings) -> str:
    return (
        f"this API key's uploads would exceed {settings.train_upload_quota_bytes} bytes "
        f"(NER_TRAIN_UPLOAD_QUOTA_BYTES); uploads expire after {settings.train_upload_retention_days} days"
    )


def owns_upload(*, session: Session, settings: Settings, owner: Owner, path: Path) -> bool:
    """Whether ``path`` (resolved) is outside the uploads folder, or inside an upload of ``owner``'s."""
    uploads = settings.uploads_dir.resolve()
    if owner.admin or not (path == uploads or path.is_relative_to(uploads)):
        return True
    parts = path.relative_to(uploads).parts
    if not parts:
        return False  # the uploads folder itself holds everyone's files
    row = session.scalar(
        select(TrainingUpload.id).where(
            TrainingUpload.path.startswith(parts[0] + "/", autoescape=True),
            TrainingUpload.api_key_id.is_not_distinct_from(owner.key_id),
        )
    )
    return row is not None


def upload_key_of(ref: str, *, settings: Settings) -> str | None:
    """The ``<id>/<name>`` of the upload ``ref`` names, or None when it names no upload.

    ``upload:<id>/<name>``, ``uploads/<id>/<name>`` (relative to the first data root, where the
    uploads folder is) and an absolute path into this host's uploads folder do. Read from the text
    alone: nothing is opened, so a symlink or a '..' is never followed into an upload (such a path
    is checked as any other path is, by ``owns_upload``).
    """
    key = upload_key(ref)  # DataError for a malformed upload: reference
    if key is not None:
        return key
    path = PurePosixPath(ref)  # drops "." parts and doubled slashes, keeps ".."
    if path.is_absolute():
        uploads = PurePosixPath(settings.uploads_dir)
        if not path.is_relative_to(uploads):
            return None
        parts = path.relative_to(uploads).parts
    else:
        if path.parts[:1] != (settings.uploads_dir.name,):
            return None
        parts = path.parts[1:]
    candidate = "/".join(parts)
    return candidate if len(parts) == 2 and UPLOAD_KEY.fullmatch(candidate) else None


def normalized(spec: DataSpec, *, settings: Settings) -> DataSpec:
    """``spec`` with every upload named ``upload:<id>/<name>``: what a run records, so the trainer
    that picks it up finds the files whatever host it runs on and wherever its uploads folder is."""
    refs = {}
    for split, ref in spec.as_dict().items():
        try:
            key = upload_key_of(ref, settings=settings)
        except DataError as exc:
            raise DataError(f"data.{split}: {exc}") from None
        refs[split] = ref if key is None else f"{UPLOAD_SCHEME}{key}"
    return replace(spec, **refs)


def usable_upload(*, session: Session, settings: Settings, owner: Owner, key: str) -> TrainingUpload | None:
    """The upload ``key`` if ``owner`` may train on it: recorded, unexpired, the owner's own (any, for
    an admin), and either on this host or in the artifact store. None otherwise (shown as missing)."""
    query = select(TrainingUpload).where(TrainingUpload.path == key, TrainingUpload.expires_at >= utcnow())
    if not owner.admin:
        query = query.where(TrainingUpload.api_key_id.is_not_distinct_from(owner.key_id))
    row = session.scalar(query)
    if row is None:
        return None
    if local_path(key, settings=settings).is_file():
        return row
    store = open_store(settings)
    # The folder store keeps no uploads: its hosts share the uploads folder itself.
    return row if not store.is_local and store.exists(_object_key(Path(key))) else None


def local_path(key: str, *, settings: Settings) -> Path:
    """Where upload ``key`` is (or is fetched to) on this host."""
    if not UPLOAD_KEY.fullmatch(key):  # keys come from upload_key_of; never joined unchecked
        raise DataError(f"{UPLOAD_SCHEME}{key}: not an upload reference")
    return settings.uploads_dir / key


def local_spec(spec: DataSpec, *, settings: Settings) -> DataSpec:
    """``spec`` with its uploads as this host's files, for the data loader (after ``fetch_uploads``)."""
    refs = {}
    for split, ref in spec.as_dict().items():
        key = upload_key_of(ref, settings=settings)
        refs[split] = ref if key is None else str(local_path(key, settings=settings))
    return replace(spec, **refs)


def purge_expired_uploads(*, session: Session, settings: Settings, now: datetime | None = None) -> int:
    """Delete uploads past their retention (files and rows); returns how many."""
    now = now or utcnow()
    rows = session.scalars(select(TrainingUpload).where(TrainingUpload.expires_at < now)).all()
    uploads = settings.uploads_dir.resolve()
    for row in rows:
        folder = (uploads / row.path).parent.resolve()
        if folder.is_relative_to(uploads) and folder != uploads:
            shutil.rmtree(folder, ignore_errors=True)
            _delete_stored(settings, folder.name)
    if rows:
        session.execute(delete(TrainingUpload).where(TrainingUpload.id.in_([row.id for row in rows])))
        session.commit()
    return len(rows)


def _object_key(relative: Path) -> str:
    return f"{UPLOADS_PREFIX}/{relative.as_posix()}"


def _delete_stored(settings: Settings, folder_name: str) -> None:
    """Remove an upload's objects from a remote store (nothing to do for the folder store)."""
    store = open_store(settings)
    if not store.is_local:
        try:
            store.delete_prefix(f"{UPLOADS_PREFIX}/{folder_name}")
        except ArtifactError as exc:  # a failed upload or the purge must not fail on the store's account
            log.warning("could not delete upload %s from the artifact store: %s", folder_name, exc)


def fetch_uploads(*, session: Session, settings: Settings, spec: DataSpec) -> list[Path]:
    """Bring the uploads a run references onto this host (a trainer that shares no disk with the
    gateway that received them), each checked against its recorded sha256; returns those fetched.

    References that are not uploads, or uploads already here, are left alone.
    """
    store = open_store(settings)
    if store.is_local:
        return []
    fetched = []
    for split, ref in spec.as_dict().items():
        key = upload_key_of(ref, settings=settings)
        if key is None:
            continue
        path = local_path(key, settings=settings)
        if path.exists():
            continue
        row = session.scalar(select(TrainingUpload).where(TrainingUpload.path == key))
        if row is None:
            raise DataError(f"data.{split}: {ref}: no such upload (expired, or never stored)")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            store.get_file(_object_key(Path(key)), partial)
            if sha256_file(partial) != row.sha256:
                raise DataError(
                    f"data.{split}: the stored upload does not match its checksum; upload it again"
                )
            partial.replace(path)
        except ArtifactMissing:
            raise DataError(f"data.{split}: the upload is no longer in the artifact store") from None
        finally:
            partial.unlink(missing_ok=True)
        fetched.append(path)
    return fetched
