"""Where a run's training data comes from: the references of a request, checked without reading data.

No ``datasets`` or torch here: the gateway validates ``POST /train`` requests with these checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.training.errors import DataError

SPLITS = ("train", "validation", "test")

# File names that say which split a file of a folder holds (eng.train, dev.conll, test.jsonl, ...).
_SPLIT_PATTERNS = {
    "train": re.compile(r"(^|[._-])train([._-]|$)"),
    "validation": re.compile(r"(^|[._-])(dev|valid|validation|val|testa)([._-]|$)"),
    "test": re.compile(r"(^|[._-])(test|testb)([._-]|$)"),
}


@dataclass(frozen=True)
class DataSpec:
    """Where a run's data comes from: one reference per split, or one folder / hub id for all."""

    train: str
    validation: str | None = None
    test: str | None = None

    @classmethod
    def parse(cls, value: str | Mapping[str, Any]) -> DataSpec:
        if isinstance(value, str):
            return cls(train=value)
        unknown = set(value) - set(SPLITS)
        if unknown:
            raise DataError(f"data: unknown split(s) {sorted(unknown)}; expected {list(SPLITS)}")
        if not value.get("train"):
            raise DataError("data: 'train' is required")
        return cls(**{key: value.get(key) for key in SPLITS})

    def as_dict(self) -> dict[str, str]:
        return {key: ref for key in SPLITS if (ref := getattr(self, key))}


# A Hugging Face id: ``owner/name``, each part starting with a letter or digit (so no "." or ".."
# parts, no absolute paths, no further separators). The base-model check accepts a bare name too.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_DATA_SUFFIXES = {".conll", ".conllu", ".txt", ".iob", ".bio", ".tsv", ".jsonl", ".json", ".ndjson"}


def _check_inside(ref: str, path: Path, roots: Sequence[Path] | None) -> None:
    # The message names the reference and the setting, never the server's folders.
    if roots is not None and not any(path == root or path.is_relative_to(root) for root in roots):
        raise DataError(f"{ref}: path is outside the allowed data folders (NER_DATA_ROOTS)")


def hub_dataset_id(ref: str, *, allow_hub: bool = True) -> str:
    """The dataset id of a hub reference (``hf:owner/name`` or ``owner/name``), checked; DataError else."""
    name = ref.removeprefix("hf:")
    if not allow_hub:
        raise DataError(f"{ref}: Hugging Face datasets are switched off here (NER_ALLOW_HUB_DATA=false)")
    if not HUB_DATASET_ID.fullmatch(name) or ".." in name:
        raise DataError(f"{ref}: not a Hugging Face dataset id (expected owner/name)")
    return name


def resolve_local(ref: str, *, roots: Sequence[Path] | None, allow_hub: bool = True) -> Path | None:
    """The local file or folder ``ref`` names, checked against ``roots``; None for a hub dataset id.

    Relative references are looked up under each root (uploads are referenced that way).
    ``roots=None`` allows any path, relative to the working directory (the ``ner train`` command,
    run by the user on their own files). ``hf:`` references are hub ids and never paths.
    """
    if ref.startswith("hf:"):
        hub_dataset_id(ref, allow_hub=allow_hub)
        return None
    raw = Path(ref).expanduser()
    if raw.is_absolute():
        candidates = [raw]
    elif roots is None:
        candidates = [Path.cwd() / raw]
    else:
        candidates = [root / raw for root in roots]
    # resolve() follows symlinks and '..', so neither can leave the allowed folders.
    resolved = [candidate.resolve() for candidate in candidates]
    for path in resolved:
        if path.exists():
            _check_inside(ref, path, roots)
            return path
    if resolved:
        _check_inside(ref, resolved[0], roots)  # outside the roots is the more useful message
    if raw.is_absolute() or ref.startswith((".", "~")) or raw.suffix.lower() in _DATA_SUFFIXES:
        raise DataError(f"{ref}: no such file or folder")
    if HUB_DATASET_ID.fullmatch(ref) and ".." not in ref:
        hub_dataset_id(ref, allow_hub=allow_hub)
        return None
    raise DataError(f"{ref}: no such file or folder, and not a Hugging Face dataset id (owner/name)")


def check_references(spec: DataSpec, *, roots: Sequence[Path] | None, allow_hub: bool = True) -> None:
    """Cheap checks a request can be refused on: paths exist and lie inside the allowed folders,
    hub ids look like ``owner/name`` (and are allowed at all)."""
    for key, ref in spec.as_dict().items():
        try:
            resolve_local(ref, roots=roots, allow_hub=allow_hub)
        except DataError as exc:
            raise DataError(f"data.{key}: {exc}") from None


def split_files(folder: Path) -> dict[str, Path]:
    """The train / validation / test files of a folder, recognised by their names."""
    found: dict[str, list[Path]] = {key: [] for key in SPLITS}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() in {".md", ".txt~"}:
            continue
        name = path.name.lower()
        for key, pattern in _SPLIT_PATTERNS.items():
            if pattern.search(name):
                found[key].append(path)
                break
    for key, paths in found.items():
        if len(paths) > 1:
            raise DataError(f"{folder}: several files look like the {key} split: {[p.name for p in paths]}")
    if not found["train"]:
        raise DataError(
            f"{folder}: no training file (expected a name like train.conll, eng.train, train.jsonl)"
        )
    return {key: paths[0] for key, paths in found.items() if paths}
