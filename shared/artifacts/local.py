"""The folder store (``NER_ARTIFACTS_URL=local``): today's behaviour, one folder every node mounts."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from shared.artifacts.errors import ArtifactMissing
from shared.artifacts.store import check_key


class LocalStore:
    """Objects are files under ``root``; versions are served in place (no cache, no copy)."""

    url = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def is_local(self) -> bool:
        return True

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write(self, key: str, write) -> None:  # type: ignore[no-untyped-def]
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            write(partial)
            os.replace(partial, target)  # readers see the old file or the new one, never half
        finally:
            partial.unlink(missing_ok=True)

    def put_file(self, key: str, source: Path) -> None:
        self._write(key, lambda partial: shutil.copyfile(source, partial))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda partial: partial.write_bytes(data))

    def get_file(self, key: str, target: Path) -> None:
        try:
            shutil.copyfile(self._path(key), target)
        except FileNotFoundError:
            raise ArtifactMissing(f"{key} is not in the artifact store") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ArtifactMissing(f"{key} is not in the artifact store") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str) -> Iterator[str]:
        folder = self._path(prefix)
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file():
                yield path.relative_to(self.root).as_posix()

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix)
        count = sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0
        shutil.rmtree(folder, ignore_errors=True)
        return count
