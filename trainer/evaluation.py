"""Scoring a model the way users reach it: raw text into the engine, character spans back onto tokens.

A CoNLL sentence becomes the text a user would send (its tokens joined by single spaces; a whole
document is its sentences joined by ``"\\n"``), ``NerEngine.predict`` answers character spans, and
each span is mapped back onto the CoNLL tokens it overlaps (IOB2) to be scored with seqeval against
the gold tags. The trainer's reported scores, the quality gate and the benchmarks all use this, so
the number a version is judged by is the number its users get.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared.artifacts.versions import sha256_file
from shared.core.config import Settings
from shared.predict.schemas import Entity
from shared.registry.gate import GateSet
from shared.training.errors import DataError
from shared.training.references import resolve_local, split_files
from trainer.conll import Sentence, read_documents
from trainer.data import iter_file
from trainer.metrics import entity_scores, per_type_scores

if TYPE_CHECKING:
    from shared.predict.engine import EngineOptions, NerEngine
    from trainer.data import LoadedData

log = logging.getLogger(__name__)

Mode = Literal["sentences", "documents"]
Offsets = list[tuple[int, int]]

# Part of every gate set's hash: a change to how texts are built or spans mapped changes the key,
# so cached scores measured the old way are not compared with new ones.
EVALUATION_VERSION = "1"
# Texts per engine call: bounds memory on large files; the engine batches within a call.
PREDICT_CHUNK = 256


# --- texts as users send them ---------------------------------------------------------------------


def sentence_text(tokens: Sequence[str]) -> tuple[str, Offsets]:
    """The tokens joined by single spaces, and each token's ``(start, end)`` in that text."""
    offsets: Offsets = []
    position = 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token) + 1
    return " ".join(tokens), offsets


def document_text(sentences: Sequence[Sentence]) -> tuple[str, list[Offsets]]:
    """The sentences joined by ``"\\n"``, and the token offsets of each sentence in that text."""
    parts: list[str] = []
    offsets: list[Offsets] = []
    base = 0
    for sentence in sentences:
        text, own = sentence_text(sentence.tokens)
        parts.append(text)
        offsets.append([(start + base, end + base) for start, end in own])
        base += len(text) + 1
    return "\n".join(parts), offsets


def spans_to_tags(offsets: Sequence[tuple[int, int]], entities: Iterable[Entity]) -> list[str]:
    """IOB2 tags of the tokens at ``offsets`` from the engine's character spans.

    A token belongs to the entity that covers most of its characters (the earlier one on a tie),
    so an entity covering part of a token tags the whole token, and a token split between two
    entities goes to the larger share. Each entity's first token gets B-, its further tokens I-:
    an entity the engine split in two stays two entities here, as the user got it.
    """
    entities = sorted(entities, key=lambda e: (e.start, e.end))
    owner: list[int | None] = [None] * len(offsets)
    best: list[int] = [0] * len(offsets)
    for index, entity in enumerate(entities):
        for position, (start, end) in enumerate(offsets):
            overlap = min(end, entity.end) - max(start, entity.start)
            if overlap > best[position]:
                owner[position], best[position] = index, overlap
    tags: list[str] = []
    previous: int | None = None
    for position, index in enumerate(owner):
        if index is None:
            tags.append("O")
        else:
            prefix = "I" if index == previous and position > 0 else "B"
            tags.append(f"{prefix}-{entities[index].entity_group}")
        previous = index
    return tags


# --- scoring --------------------------------------------------------------------------------------


def score_tags(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (seqeval, IOB2), overall and per type, JSON-ready."""
    return {**entity_scores(gold, pred), "per_type": per_type_scores(gold, pred), "sentences": len(gold)}


def _predict(engine: NerEngine, texts: Sequence[str]) -> list[list[Entity]]:
    out: list[list[Entity]] = []
    for start in range(0, len(texts), PREDICT_CHUNK):
        out.extend(engine.predict(texts[start : start + PREDICT_CHUNK]))
    return out


def tag_sentences(engine: NerEngine, sentences: Sequence[Sentence]) -> list[list[str]]:
    """Predicted IOB2 tags of each sentence, sent to the engine one sentence per text."""
    built = [sentence_text(s.tokens) for s in sentences]
    predicted = _predict(engine, [text for text, _ in built])
    return [spans_to_tags(offsets, entities) for (_, offsets), entities in zip(built, predicted, strict=True)]


def tag_documents(engine: NerEngine, documents: Sequence[Sequence[Sentence]]) -> list[list[str]]:
    """Predicted IOB2 tags of each sentence, sent to the engine one whole document per text."""
    built = [document_text(document) for document in documents]
    predicted = _predict(engine, [text for text, _ in built])
    tags: list[list[str]] = []
    for (_, sentence_offsets), entities in zip(built, predicted, strict=True):
        tags.extend(spans_to_tags(offsets, entities) for offsets in sentence_offsets)
    return tags


def evaluate_sentences(engine: NerEngine, sentences: Sequence[Sentence]) -> dict[str, Any]:
    """The engine's score on ``sentences``, sent one per text."""
    return score_tags([s.tags for s in sentences], tag_sentences(engine, sentences))


def evaluate_documents(engine: NerEngine, documents: Sequence[Sequence[Sentence]]) -> dict[str, Any]:
    """The engine's score on ``documents``, each sent whole (its sentences joined by newlines)."""
    gold = [s.tags for document in documents for s in document]
    return score_tags(gold, tag_documents(engine, documents))


def load_engine(model_dir: str | Path, options: EngineOptions | None = None) -> NerEngine:
    """The engine users get for a model folder (or hub id)."""
    from shared.predict.engine import NerEngine

    return NerEngine.load(model_dir, options)


# --- the trainer's reported scores ----------------------------------------------------------------


def _split_sentences(data: LoadedData, key: str) -> list[Sentence]:
    dataset = data.splits[key]
    return [
        Sentence(list(tokens), list(tags))
        for tokens, tags in zip(dataset["tokens"], dataset["tags"], strict=True)
    ]


def _documents_of(source: str | None) -> list[list[Sentence]] | None:
    """The documents of a split read from a local CoNLL file (split at -DOCSTART-), else None."""
    if not source:
        return None
    path = Path(source)
    if not path.is_file():
        return None
    try:
        documents = read_documents(path)
    except (DataError, UnicodeDecodeError, ValueError):
        return None  # JSONL or another shape: sentences only
    if all(len(document) == 1 for document in documents):
        return None  # no document boundaries: whole documents would only repeat the sentences
    return documents


def engine_reports(
    *, model_dir: str | Path, data: LoadedData, options: EngineOptions | None = None
) -> dict[str, dict[str, Any]]:
    """Validation and test scores of a trained folder through the engine.

    ``{"validation": {"sentences": report, "documents": report}, "test": {...}}``; ``documents`` only
    where the split is a local CoNLL file with document boundaries (-DOCSTART- lines).
    """
    engine = load_engine(model_dir, options)
    reports: dict[str, dict[str, Any]] = {}
    for key in ("validation", "test"):
        if key not in data.splits or len(data.splits[key]) == 0:
            continue
        split: dict[str, Any] = {"sentences": evaluate_sentences(engine, _split_sentences(data, key))}
        # A validation split cut from train is named "10% of ..." (no file): sentences only.
        documents = _documents_of(data.sources.get(key))
        if documents is not None:
            split["documents"] = evaluate_documents(engine, documents)
        reports[key] = split
    return reports


# --- the operator's gate set ----------------------------------------------------------------------


def gate_file(settings: Settings) -> tuple[str, Path] | None:
    """The operator's gate set: ``NER_GATE_DATA``, else the validation split of ``NER_BOOTSTRAP_DATA``.

    A folder stands for its validation split (dev, valid, testa, ...). None when neither is set;
    a reference that cannot be used raises DataError naming the setting.
    """
    if settings.gate_data:
        name, ref = "NER_GATE_DATA", settings.gate_data
    elif settings.bootstrap_data:
        name, ref = "NER_BOOTSTRAP_DATA", settings.bootstrap_data
    else:
        return None
    try:
        path = resolve_local(ref, roots=settings.data_roots)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None
    if path is None:
        raise DataError(f"{name}: {ref!r} is not a local file or folder; the gate needs local data")
    if path.is_dir():
        validation = split_files(path).get("validation")
        if validation is None:
            raise DataError(f"{name}: {ref} has no validation file (dev, valid, testa)")
        path = validation
    return ref, path


def gate_sentences(path: Path) -> list[Sentence]:
    """The sentences of a gate file, CoNLL or JSONL (the trainer's own readers and checks)."""
    return [Sentence(row["tokens"], row["tags"]) for row in iter_file(path)]


def engine_fingerprint() -> str:
    """A hash of the engine's source: an upgrade that changes how text is decoded changes it, so an
    active version's cached gate score from the old engine is measured again, not compared."""
    import shared.predict.engine as engine_package

    folder = Path(engine_package.__file__).parent
    digest = hashlib.sha256()
    # The engine's modules and the case feature it feeds the model (shared/predict/casing.py).
    for source in [*sorted(folder.glob("*.py")), folder.parent / "casing.py"]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def gate_set_from_settings(
    settings: Settings,
    *,
    options: EngineOptions | None = None,
    loader: Callable[..., NerEngine] = load_engine,
) -> GateSet | None:
    """The gate set the registry judges candidates on, scored through the engine; None when there is none.

    Its hash covers the file's content, how texts are built and mapped, the engine's code and the
    precision users get (``NER_PRECISION``, resolved on this machine), so a cached score is only
    reused for the same measurement.
    """
    found = gate_file(settings)
    if found is None:
        return None
    ref, path = found
    sentences = gate_sentences(path)
    if not sentences:
        raise DataError(f"gate set {ref}: no sentences")
    from shared.predict.engine import EngineOptions

    precision = (options or EngineOptions()).resolved_precision()
    digest = hashlib.sha256(
        f"{sha256_file(path)}:evaluation-{EVALUATION_VERSION}:engine-{engine_fingerprint()}:"
        f"precision-{precision}".encode()
    ).hexdigest()

    def score(model_dir: str) -> dict[str, Any]:
        return evaluate_sentences(loader(model_dir, options), sentences)

    return GateSet(ref=ref, gate_hash=digest, sentences=len(sentences), score=score)
