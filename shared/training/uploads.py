"""Training data files sent to the gateway: stored under the uploads folder, referenced in POST /train."""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.core.config import Settings
from shared.training.errors import UploadRejected, UploadTooLarge

UPLOAD_MAX_BYTES = 2 * 1024**3
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StoredUpload:
    path: Path
    bytes: int
    sha256: str


def safe_name(filename: str | None) -> str:
    """The file's base name with anything but letters, digits, '.', '_' and '-' replaced."""
    return _UNSAFE.sub("_", (filename or "data").rsplit("/", 1)[-1]).strip("._") or "data"


def store_upload(*, settings: Settings, filename: str | None, stream: BinaryIO) -> StoredUpload:
    """Copy ``stream`` into a folder of its own under NER_UPLOADS_DIR; nothing is kept on refusal."""
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
                if size > UPLOAD_MAX_BYTES:
                    raise UploadTooLarge(f"upload larger than {UPLOAD_MAX_BYTES} bytes")
                digest.update(chunk)
                handle.write(chunk)
        if size == 0:
            raise UploadRejected(f"{name}: the uploaded file is empty")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StoredUpload(path=target, bytes=size, sha256=digest.hexdigest())
