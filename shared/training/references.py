"""Where a run's training data comes from: the references of a request, checked without reading data.

No ``datasets`` or torch here: the gateway validates ``POST /train`` requests with these checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
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
            value = {"train": value}
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
# A Hub base model named by a request is pinned to one commit: ``owner/name@<40-hex commit sha>``
# (``name@<sha>`` for the Hub's old unprefixed ids). A branch or tag could be moved under the run.
HUB_MODEL_PINNED = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}(?:/[A-Za-z0-9][\w.-]{0,95})?)@(?P<revision>[0-9a-f]{40})$"
)
_DATA_SUFFIXES = {".conll", ".conllu", ".txt", ".iob", ".bio", ".tsv", ".jsonl", ".json", ".ndjson"}

# A file sent to POST /train/uploads, named the same on every host: ``upload:<id>/<name>``, where
# <id> is the upload's folder (32 hex digits) and <name> its stored file name. Each host finds it
# under its own uploads folder, or fetches it from the artifact store (shared/training/uploads.py).
UPLOAD_SCHEME = "upload:"
UPLOAD_KEY = re.compile(r"^(?P<id>[0-9a-f]{32})/(?P<name>[A-Za-z0-9_-][A-Za-z0-9._-]{0,254})$")


def upload_key(ref: str) -> str | None:
    """The ``<id>/<name>`` of an ``upload:`` reference; None for other references, DataError if malformed.

    Only the exact shape is accepted (no '..', no '/', no absolute path): the key is joined to
    the uploads folder, so nothing else could be named through it.
    """
    if not ref.startswith(UPLOAD_SCHEME):
        return None
    key = ref.removeprefix(UPLOAD_SCHEME)
    if not UPLOAD_KEY.fullmatch(key):
        raise DataError(
            f"{ref}: not an upload reference (expected upload:<id>/<name>, as POST /train/uploads returns)"
        )
    return key


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
    if upload_key(ref) is not None:
        # The service maps uploads to this host's uploads folder before reading (uploads.local_spec).
        raise DataError(f"{ref}: an upload; only a run queued through POST /train can read it")
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
    hub ids look like ``owner/name`` (and are allowed at all), uploads are well formed (whether one
    exists and is the caller's is the database's to say: ``uploads.usable_upload``)."""
    for key, ref in spec.as_dict().items():
        try:
            if upload_key(ref) is not None:
                continue
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


# --- Hub base models: a pinned revision and a size cap, checked before anything is downloaded -------

# What from_pretrained never fetches for a PyTorch model: other frameworks' weights and exports.
_OTHER_FORMATS = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".gguf", ".mlmodel")
_OTHER_FOLDERS = ("onnx/", "openvino/", "coreml/", "tflite/")

# huggingface_hub.HfApi().model_info's call shape; tests pass a fake one (the Hub cannot be reached).
ModelInfo = Callable[..., Any]


class HubUnreachable(Exception):
    """The Hub did not answer (offline, DNS, 5xx): the size could not be checked."""


@dataclass(frozen=True)
class HubModelRef:
    """A pinned Hub model: repository id and commit."""

    repo_id: str
    revision: str

    @classmethod
    def parse(cls, value: str) -> HubModelRef | None:
        """The pinned reference in ``owner/name@<sha>``, or None when the value is not one."""
        match = HUB_MODEL_PINNED.match(value)
        return cls(match["repo"], match["revision"]) if match else None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"


def download_bytes(files: Sequence[tuple[str, int | None]]) -> int | None:
    """Bytes from_pretrained may fetch from a repository listing; None if a size is unknown.

    Other frameworks' files are left out; pickle weights too where safetensors exist (those win).
    """
    names = [name for name, _ in files]
    has_safetensors = any(name.endswith(".safetensors") for name in names)
    total = 0
    for name, size in files:
        if name.endswith(_OTHER_FORMATS) or name.startswith(_OTHER_FOLDERS):
            continue
        if has_safetensors and name.endswith((".bin", ".pt", ".pth", ".ckpt")):
            continue
        if size is None:
            return None
        total += size
    return total


def _hub_listing(ref: HubModelRef, *, model_info: ModelInfo | None) -> list[tuple[str, int | None]]:
    # Only the listing's metadata is fetched (one API call), never a file.
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    fetch = model_info or HfApi().model_info
    try:
        info = fetch(ref.repo_id, revision=ref.revision, files_metadata=True, timeout=10)
    except GatedRepoError:
        raise DataError(f"base_model: {ref}: a gated model; the trainer has no access to it") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise DataError(f"base_model: {ref}: no such model or revision on the Hugging Face Hub") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and 400 <= status < 500 and status not in (401, 429):
            raise DataError(f"base_model: {ref}: refused by the Hugging Face Hub ({status})") from None
        raise HubUnreachable(str(ref)) from None
    except Exception:  # network errors of the HTTP client, offline mode
        raise HubUnreachable(str(ref)) from None
    return [(sibling.rfilename, sibling.size) for sibling in (info.siblings or [])]


def check_hub_base_model(
    ref: HubModelRef, *, max_bytes: int, model_info: ModelInfo | None = None, unreachable_ok: bool = False
) -> int | None:
    """Refuse (422) a pinned Hub model larger than max_bytes (NER_BASE_MODEL_MAX_BYTES), or unknown.

    Returns the size in bytes. ``unreachable_ok`` (the gateway) returns None when the Hub
    does not answer: the trainer checks again before it downloads anything, and refuses then.
    """
    try:
        files = _hub_listing(ref, model_info=model_info)
    except HubUnreachable:
        if unreachable_ok:
            return None
        raise DataError(
            f"base_model: {ref}: the Hugging Face Hub cannot be reached to check its size "
            "(NER_BASE_MODEL_MAX_BYTES) before downloading"
        ) from None
    size = download_bytes(files)
    if size is None:
        raise DataError(f"base_model: {ref}: the Hub does not list its file sizes; refused unchecked")
    if not files:
        raise DataError(f"base_model: {ref}: the repository holds no files at that revision")
    if size > max_bytes:
        raise DataError(
            f"base_model: {ref} is {size:,} bytes, over the limit NER_BASE_MODEL_MAX_BYTES={max_bytes:,}"
        )
    return size
