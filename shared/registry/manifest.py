"""The files of a version folder and their sha256: written on publish, checked on activation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shared.registry.errors import CorruptVersion

# Written into every published version folder: the files and their sha256, checked on activation.
MANIFEST = "manifest.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


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
