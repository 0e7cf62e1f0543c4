"""Versions in a store: publish a finished folder, fetch one into this node's verified cache.

A version in a remote store is named by a URI the registry records, e.g.
``s3://bucket/prefix/models/v3#sha256=<manifest sha256>``: the database row pins the manifest's
hash, and the manifest pins every file's, so nothing in the store has to be trusted. The manifest
is written last: a version's objects are complete before anything could name them, and the
registry row that names them is committed after that.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from shared.artifacts.errors import ArtifactCorrupt, ArtifactError, ArtifactMissing
from shared.artifacts.store import MODELS_PREFIX, ObjectStore

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # in every version folder: its files and sha256 (shared/registry/manifest.py)
_PIN = "#sha256="
KEEP_CACHED = 5  # versions a node keeps beyond the ones it is asked for


def version_key(version: int) -> str:
    return f"{MODELS_PREFIX}/v{version}"


def is_store_uri(path: str) -> bool:
    """Whether a registry path names an object in a store (else it is a local folder)."""
    return _PIN in path and path.startswith(("s3://", "postgresql:"))


def version_uri(store: ObjectStore, version: int, manifest_sha256: str) -> str:
    return f"{store.url}{version_key(version)}{_PIN}{manifest_sha256}"


def parse_uri(store: ObjectStore, uri: str) -> tuple[str, str]:
    """(object key prefix, pinned manifest sha256) of a version URI of ``store``."""
    location, _, pinned = uri.partition(_PIN)
    if not location.startswith(store.url) or not store.url or len(pinned) != 64:
        raise ArtifactMissing(
            f"{location} is not in the configured artifact store (NER_ARTIFACTS_URL); "
            "every node must use the same store"
        )
    return location[len(store.url) :], pinned


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_files(data: bytes, *, name: str) -> dict[str, str]:
    """{relative path: sha256} of a manifest's bytes; ArtifactCorrupt when malformed or escaping."""
    try:
        files = json.loads(data)["files"]
    except (ValueError, KeyError, TypeError):
        raise ArtifactCorrupt(f"{name}: {MANIFEST} is unreadable") from None
    if not isinstance(files, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in files.items()
    ):
        raise ArtifactCorrupt(f"{name}: {MANIFEST} is malformed")
    for relative in files:
        parts = PurePosixPath(relative).parts
        # A manifest is data from the artifact store: it must not point outside its own folder.
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts or relative == MANIFEST:
            raise ArtifactCorrupt(f"{name}: {MANIFEST} names a file outside the folder")
    return files


def upload_version(*, store: ObjectStore, folder: Path, version: int) -> str:
    """Store every file of ``folder`` (which holds its manifest) as ``version``, the manifest last;
    returns the URI to record. Objects of an earlier, uncommitted attempt at the number are replaced."""
    manifest = (folder / MANIFEST).read_bytes()
    prefix = version_key(version)
    for relative in manifest_files(manifest, name=f"version {version}"):
        store.put_file(f"{prefix}/{relative}", folder / relative)
    store.put_bytes(f"{prefix}/{MANIFEST}", manifest)
    return version_uri(store, version, hashlib.sha256(manifest).hexdigest())


def delete_version(*, store: ObjectStore, uri: str) -> int:
    """Remove a version's objects (a publish that did not commit)."""
    prefix, _ = parse_uri(store, uri)
    return store.delete_prefix(prefix)


@contextmanager
def _locked(cache_dir: Path, name: str) -> Iterator[None]:
    """One fetch of a version per node at a time (pool processes share the cache folder)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f".lock-{name}").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_folder(cache_dir: Path, manifest_sha256: str) -> Path:
    return cache_dir / manifest_sha256


def add_to_cache(*, cache_dir: Path, folder: Path, manifest_sha256: str) -> Path:
    """Move a folder this node just published into its cache, so it is never downloaded here."""
    target = cached_folder(cache_dir, manifest_sha256)
    with _locked(cache_dir, manifest_sha256):
        if target.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            os.replace(folder, target)
    return target


def fetch_version(*, store: ObjectStore, uri: str, cache_dir: Path, refresh: bool = False) -> Path:
    """The local folder of a stored version: the cached copy, else downloaded and checked first.

    Every file is compared with the manifest, and the manifest with the hash the registry pinned,
    before the folder gets its cache name: a tampered or truncated object raises ArtifactCorrupt
    and nothing of it is kept. ``refresh`` drops a cached copy first (it failed verification).
    """
    prefix, pinned = parse_uri(store, uri)
    name = prefix.rsplit("/", 1)[-1]
    target = cached_folder(cache_dir, pinned)
    with _locked(cache_dir, pinned):
        if refresh and target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        if target.is_dir():
            os.utime(target)  # recently used: kept by prune_cache
            return target
        partial = cache_dir / f".partial-{uuid.uuid4().hex}"
        partial.mkdir(parents=True)
        try:
            manifest = store.get_bytes(f"{prefix}/{MANIFEST}")
            if hashlib.sha256(manifest).hexdigest() != pinned:
                raise ArtifactCorrupt(f"{name}: {MANIFEST} does not match the registry (checksum mismatch)")
            for relative, expected in manifest_files(manifest, name=name).items():
                file = partial / relative
                file.parent.mkdir(parents=True, exist_ok=True)
                store.get_file(f"{prefix}/{relative}", file)
                if sha256_file(file) != expected:
                    raise ArtifactCorrupt(f"{name}: {relative} is corrupt (checksum mismatch)")
            (partial / MANIFEST).write_bytes(manifest)
            os.replace(partial, target)
        except ArtifactError as exc:
            log.error("refused %s from the artifact store: %s", name, exc)
            raise
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    log.info("fetched %s from the artifact store into the local cache", name)
    prune_cache(cache_dir=cache_dir, keep={pinned})
    return target


def prune_cache(*, cache_dir: Path, keep: set[str], extra: int = KEEP_CACHED) -> None:
    """Drop all but the ``extra`` most recently used cached versions (and those in ``keep``).

    A process still serving a dropped version holds it in memory; it is fetched again if needed.
    """
    entries = sorted(
        (path for path in cache_dir.iterdir() if path.is_dir() and len(path.name) == 64),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for path in [p for p in entries if p.name not in keep][extra:]:
        shutil.rmtree(path, ignore_errors=True)
