"""The object store protocol every backend implements, and the one chosen by the settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from shared.core.config import Settings

# Object keys: "models/v<N>/<file>" for versions, "uploads/<id>/<name>" for training uploads.
MODELS_PREFIX = "models"
UPLOADS_PREFIX = "uploads"


class ObjectStore(Protocol):
    """Flat keys ("a/b/c") to bytes. Writes of one key replace it whole; reads stream to a file."""

    # What the registry records before a key: "s3://bucket/prefix/" or "postgresql:"; "" for local.
    url: str

    @property
    def is_local(self) -> bool:
        """True for the folder store: versions are served from it in place, without a cache."""
        ...

    def put_file(self, key: str, source: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_file(self, key: str, target: Path) -> None:
        """Write the object to ``target``; ArtifactMissing when there is none."""
        ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str) -> Iterator[str]: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix/``; returns how many."""
        ...


def check_key(key: str) -> str:
    """Keys are built by this service, but a manifest names files too: no '..', no leading '/'."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


_stores: dict[tuple[object, ...], ObjectStore] = {}
_stores_lock = threading.Lock()


def open_store(settings: Settings) -> ObjectStore:
    """The store ``NER_ARTIFACTS_URL`` names: one per configuration and process, so its client
    (a boto3 client, a database engine and its pool) is created once, lazily, and reused."""
    key = (
        settings.artifacts_url, settings.database_url, settings.artifacts_dir, settings.s3_endpoint_url,
        settings.s3_region, settings.s3_access_key_id, settings.s3_secret_access_key,
    )  # fmt: skip
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = _open(settings)
        return store


def _open(settings: Settings) -> ObjectStore:
    url = settings.artifacts_url
    if url.startswith("s3://"):
        from shared.artifacts.s3 import S3Store

        return S3Store.from_settings(settings)
    if url == "postgresql":
        from shared.artifacts.database import DatabaseStore

        return DatabaseStore(settings.database_url)
    from shared.artifacts.local import LocalStore

    assert settings.artifacts_dir is not None  # derived by Settings
    return LocalStore(settings.artifacts_dir)
