"""The files of a version folder and their sha256: written on publish, checked on activation and load.

A servable version folder holds ``config.json`` (with ``id2label``), ``model.safetensors`` and a
``manifest.json`` that lists every other file of the folder with its sha256. Pickle-based weights
(``pytorch_model.bin``, ``*.pt``, ...) are refused wherever they appear: loading one runs code.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.artifacts.errors import ArtifactCorrupt
from shared.artifacts.versions import MANIFEST, manifest_files, sha256_file
from shared.registry.errors import CorruptVersion

WEIGHTS = "model.safetensors"
WEIGHT_FILES = (WEIGHTS,)
# Files that are deserialised with pickle by torch or transformers: never in a version folder.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED = ("config.json", WEIGHTS)


def write_manifest(folder: Path) -> dict[str, str]:
    """Record every file of a version folder with its sha256 (activation and loading check them)."""
    files = {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=2, sort_keys=True))
    return files


def _read_manifest(folder: Path, name: str) -> dict[str, str]:
    """The manifest's {relative path: sha256}; CorruptVersion when missing, unreadable or malformed."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CorruptVersion(f"{name}: {MANIFEST} is missing (a version must list its files and hashes)")
    try:
        return manifest_files(path.read_bytes(), name=name)
    except OSError:
        raise CorruptVersion(f"{name}: {MANIFEST} is unreadable") from None
    except ArtifactCorrupt as exc:  # the store's own check: malformed, or naming a file outside
        raise CorruptVersion(str(exc)) from None


def validate_version_folder(path: str | Path) -> None:
    """Raise CorruptVersion unless ``path`` holds a servable model: config with labels, safetensors
    weights, no pickle files, and a manifest whose every file is present with its sha256.

    Messages name the folder by its last component only: they reach API callers.
    """
    folder = Path(path)
    name = f"model folder {folder.name!r}"
    if not folder.is_dir():
        raise CorruptVersion(f"{name} is missing")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
    pickles = sorted(p for p in present if p.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise CorruptVersion(
            f"{name} holds pickle weights ({', '.join(pickles)}), which are never loaded; "
            f"save the model as {WEIGHTS}"
        )
    for required in REQUIRED:
        if required not in present:
            raise CorruptVersion(f"{name}: {required} is missing")
    files = _read_manifest(folder, name)
    for required in REQUIRED:
        if required not in files:
            raise CorruptVersion(f"{name}: {MANIFEST} does not list {required}")
    unlisted = sorted(present - set(files) - {MANIFEST})
    if unlisted:
        raise CorruptVersion(f"{name}: files not in {MANIFEST}: {', '.join(unlisted[:5])}")
    for relative, expected in files.items():
        file = folder / relative
        if not file.is_file():  # a symlink counts by what it points to: its content is hashed
            raise CorruptVersion(f"{name}: {relative} is missing")
        if sha256_file(file) != expected:
            raise CorruptVersion(f"{name}: {relative} is corrupt (checksum mismatch)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise CorruptVersion(f"{name}: config.json is unreadable") from None
    if not isinstance(config, dict) or not config.get("id2label"):
        raise CorruptVersion(f"{name}: config.json has no id2label")
    _check_safetensors_header(folder / WEIGHTS, name)


def _check_safetensors_header(path: Path, name: str) -> None:
    """The header of a safetensors file is JSON after an 8-byte length: parse it without torch."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= 100 * 2**20 or size + 8 > path.stat().st_size:
                raise ValueError("bad header length")
            header = json.loads(handle.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (OSError, ValueError):
        raise CorruptVersion(f"{name}: {WEIGHTS} is not a safetensors file") from None
