"""Bring an existing model into the registry: a local folder or a Hugging Face Hub id becomes a version.

``ner models import`` and ``POST /models/import`` both end here, and so does ``NER_MODEL`` at a first
start (``seed.py``): whatever a deployment serves is then a version that can be compared, replaced
and rolled back to. The model files are copied (pickle weights never), the model is loaded and run
on a sentence through the caller's engine (``verify``: the registry imports no torch), the manifest
and a model card are written, and, when the operator has a gate set, its scores there are recorded
beside the active version's, as for a trained candidate. Activation stays an explicit choice.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.tables import ModelVersion
from shared.registry import gate, service
from shared.registry.errors import ImportRefused
from shared.registry.manifest import MANIFEST, PICKLE_SUFFIXES, WEIGHTS
from shared.registry.publish import Candidate, publish_active_as, publish_version

log = logging.getLogger(__name__)

# Gate scores of a version imported through the API: the trainer computes them (the gate's engine
# evaluation is trainer code, which the gateway never imports) on the training queue.
SCORE_TASK = "ner.registry.score_import"

# owner/name as the Hub spells repository ids (no paths, no URLs).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
# What a token-classification model needs from a Hub repository: no pickle weights, no other formats.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "README.md"]
SAMPLE_TEXT = "Google was founded by Larry Page and Sergey Brin in California."
CARD = "README.md"

# folder -> the model's labels, after loading it and running SAMPLE_TEXT; raises when it cannot.
Verifier = Callable[[Path], list[str]]
# hub id -> a local folder holding its files.
Downloader = Callable[[str], Path]


def hub_download(repo_id: str) -> Path:
    """The Hub repository's model files in the local cache (``huggingface_hub.snapshot_download``)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))


def engine_verifier(load: Callable[[str], Any]) -> Verifier:
    """A verifier over an engine loader (``NerEngine.load``): loads the folder and runs one sentence."""

    def verify(folder: Path) -> list[str]:
        engine = load(str(folder))
        answers = engine.predict([SAMPLE_TEXT])
        if len(answers) != 1:
            raise ImportRefused(f"the model answered {len(answers)} results for one text")
        return list(engine.labels)

    return verify


@dataclass(frozen=True)
class Imported:
    """The registered version, where it came from and (with a gate set) its gate scores."""

    version: ModelVersion
    source: str
    decision: gate.Decision | None


def _within(path: Path, roots: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.expanduser().resolve()) for root in roots)


def resolve_source(*, source: str, roots: Sequence[Path] | None, download: Downloader | None = None) -> Path:
    """The local folder of ``source``: a folder (inside ``roots`` when given) or a downloaded hub id."""
    text = source.strip()
    if not text or len(text) > 1000 or "\x00" in text:
        raise ImportRefused("source: give a model folder or a Hugging Face model id (owner/name)")
    try:
        folder = Path(text).expanduser()
        looks_local = text.startswith(("/", ".", "~")) or folder.exists()
        if looks_local:
            if roots is not None and not _within(folder, roots):
                raise ImportRefused(
                    f"source: {text[:200]!r} is outside the service's data folders; put the model folder "
                    "there or give a Hugging Face model id"
                )
            if not folder.is_dir():
                raise ImportRefused(f"source: {text[:200]!r} is not a folder")
            return folder
    except (OSError, RuntimeError, ValueError):  # a name too long, a loop of links, no home folder
        raise ImportRefused(f"source: {text[:100]!r} is not a readable folder") from None
    if not HUB_ID.fullmatch(text):
        raise ImportRefused(f"source: {text[:100]!r} is neither a model folder nor a Hub id (owner/name)")
    try:
        return (download or hub_download)(text)
    except ImportRefused:
        raise
    except Exception as exc:  # offline, unknown repository, gated model: one line, not a traceback
        raise ImportRefused(f"source: cannot download {text!r} from the Hub ({type(exc).__name__})") from exc


def _stage_files(folder: Path, into: Path) -> None:
    """Copy the model's files, never pickle weights nor an old manifest; refuse what cannot be served."""
    if not (folder / "config.json").is_file():
        raise ImportRefused("source: the folder has no config.json (not a transformers model)")
    if not (folder / WEIGHTS).is_file():
        pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        why = f" (only pickle weights: {', '.join(sorted(pickled)[:3])})" if pickled else ""
        raise ImportRefused(
            f"source: the folder has no {WEIGHTS}{why}; convert the weights to one safetensors file"
        )
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_dir() or relative.parts[0].startswith(".") or path.suffix in PICKLE_SUFFIXES:
            continue
        if relative.as_posix() == MANIFEST:
            continue
        target = into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # follows links: a Hub cache holds symlinks to blobs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _f1(report: Any) -> float | None:
    value = report.get("f1") if isinstance(report, dict) else None
    return float(value) if isinstance(value, int | float) else None


def folder_labels(folder: Path) -> list[str]:
    """The model's labels in id order, from its config.json (empty when it names none)."""
    id2label = _read_json(folder / "config.json").get("id2label") or {}
    if not isinstance(id2label, dict):
        return []
    try:
        return [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return []


def folder_candidate(folder: Path, *, source: str, data_ref: dict[str, Any] | None = None) -> Candidate:
    """A model folder as a registry candidate, with what its metrics.json and config.json say."""
    metrics = _read_json(folder / "metrics.json")
    engine = metrics.get("engine") if isinstance(metrics.get("engine"), dict) else {}

    def split_f1(split: str) -> float | None:
        # The engine's score (one sentence per text) when the card has it, else the training loop's.
        measured = _f1((engine.get(split) or {}).get("sentences"))
        return measured if measured is not None else _f1(metrics.get(split))

    data = metrics.get("data")
    return Candidate(
        model_dir=folder,
        base_model=str(metrics.get("base_model") or source),
        data_hash=str(metrics.get("data_hash") or "")[:64],
        data_ref={**(data if isinstance(data, dict) else {}), **(data_ref or {"imported_from": source})},
        params=metrics.get("params") if isinstance(metrics.get("params"), dict) else {},
        metrics=metrics,
        labels=folder_labels(folder),
        val_f1=split_f1("validation"),
        test_f1=split_f1("test"),
    )


def _card_writer(source: str, labels: list[str]) -> Callable[[Path, int], None]:
    """Keeps the model's own card and says where the version came from; writes one when it has none."""

    def write(folder: Path, version: int) -> None:
        card = folder / CARD
        types = sorted({label.split("-", 1)[-1] for label in labels if label != "O"})
        note = (
            f"\n\n---\nRegistered as version {version} of this NER service on "
            f"{datetime.now(UTC):%Y-%m-%d}, imported from `{source}`. "
            f"Entity types: {', '.join(types) or '-'}.\n"
        )
        if card.is_file():
            card.write_text(card.read_text(errors="replace") + note)
        else:
            card.write_text(f"# {source.rstrip('/').split('/')[-1]}\n\nA token-classification model.{note}")

    return write


def import_model(
    *,
    session: Session,
    artifacts_dir: Path,
    source: str,
    verify: Verifier | None,
    activate: bool = False,
    redis_url: str | None = None,
    roots: Sequence[Path] | None = None,
    gate_set: gate.GateSet | None = None,
    download: Downloader | None = None,
    as_version: int | None = None,
    settings: Settings | None = None,
) -> Imported | None:
    """Copy, check, and register ``source`` as version N+1 (committed); with ``activate``, promote it.

    ``verify`` is None only where no engine can run (then the first process to serve it checks it);
    ``roots`` confines a local folder (the API's callers); ``gate_set`` scores it beside the active
    version on the operator's gate set. ``as_version`` registers exactly that number, active (a first
    start): None, with nothing changed, when another process took it first. ``settings`` name the
    artifact store the version goes to (``NER_ARTIFACTS_URL``; the folder ``artifacts_dir`` otherwise).
    """
    folder = resolve_source(source=source, roots=roots, download=download)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=artifacts_dir) as tmp:
        staged = Path(tmp) / "model"
        _stage_files(folder, staged)
        labels = folder_labels(staged)
        if verify is not None:
            try:
                labels = verify(staged) or labels
            except ImportRefused:
                raise
            except Exception as exc:
                first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                raise ImportRefused(f"source: the model does not load or answer: {first}") from exc
        if not [label for label in labels if label != "O"]:
            raise ImportRefused("source: the model names no entity labels (config.json id2label)")
        candidate = replace(
            folder_candidate(staged, source=source),
            labels=labels,
            write_extras=_card_writer(source, labels),
        )
        if as_version is not None:
            row = publish_active_as(
                session=session,
                artifacts_dir=artifacts_dir,
                candidate=candidate,
                version=as_version,
                settings=settings,
            )
            if row is None:
                return None
            activate = False  # already active, in the same transaction as its registration
        else:
            row = publish_version(
                session=session, artifacts_dir=artifacts_dir, candidate=candidate, settings=settings
            )
    decision = None
    if gate_set is not None:
        decision = score_on_gate(session=session, row=row, gate_set=gate_set, source=source)
    if activate:
        if redis_url is None:
            service.activate(session=session, version=row.version)
            session.commit()
        else:
            service.promote(session=session, version=row.version, redis_url=redis_url)
    log.info("imported %s as version %s (%s)", source, row.version, row.status.value)
    return Imported(version=row, source=source, decision=decision)


def score_on_gate(
    *, session: Session, row: ModelVersion, gate_set: gate.GateSet, source: str
) -> gate.Decision:
    """Score an imported version beside the active one on the gate set and record it (committed).

    Held, never promoted by the gate: importing is not training. Safe to run twice (the same
    decision is recorded again).
    """
    judged = gate.decide(session=session, candidate=row, policy="never", gate_set=gate_set)
    decision = gate.Decision(
        gate.HELD,
        f"imported from {source}: activated only by an admin",
        judged.candidate_score,
        judged.active_score,
    )
    gate.record(candidate=row, decision=decision)
    session.commit()
    return decision
