"""Training data: CoNLL files or folders, JSONL, or a Hugging Face dataset id, loaded with ``datasets``.

Every source becomes a ``datasets.Dataset`` with the columns ``tokens``, ``tags`` (IOB2 strings) and
``origin`` (``file:line`` of the sentence, so later checks can still name where a tag came from).
Local files are read by a generator into Arrow files on disk (memory-mapped), so a corpus larger than
memory streams through. Every check runs while reading, before any training step; a bad line stops
the run with a :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow.compute as pc

from shared.artifacts.versions import sha256_file
from shared.predict.engine.words import split_words
from shared.training.errors import DataError
from shared.training.references import SPLITS, DataSpec, resolve_local, split_files
from trainer import formats
from trainer.conll import _check_tag, iob1_to_iob2, iter_conll_lines

log = logging.getLogger(__name__)

FEATURES = datasets.Features(
    {
        "tokens": datasets.Sequence(datasets.Value("string")),
        "tags": datasets.Sequence(datasets.Value("string")),
        "origin": datasets.Value("string"),
        # Sentences of one document share an id and are next to each other (context for training);
        # a sentence with a negative id has no neighbours of its own document.
        "document": datasets.Value("int64"),
    }
)
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
# Bump when a reader changes what it yields, so cached Arrow files of older readers are not reused.
READER_VERSION = "2"


@dataclass
class LoadedData:
    """The splits of a run, ready for encoding, and what the model card needs to know about them."""

    splits: datasets.DatasetDict
    labels: list[str]
    data_hash: str
    sources: dict[str, str]
    validation_split_from_train: bool = False
    label_counts: dict[str, int] = field(default_factory=dict)

    def sentences(self, split: str) -> int:
        return len(self.splits[split]) if split in self.splits else 0


# --- readers --------------------------------------------------------------------------------------


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def _words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    # The engine's own words: what the model is trained to label is what it decodes.
    return [(text[start:end], start, end) for start, end in split_words(text)]


def _tags_from_entities(text: str, entities: Any, where: str) -> tuple[list[str], list[str]]:
    """Words of ``text`` and their IOB2 tags from character spans; spans must cover whole words."""
    if not isinstance(entities, list):
        raise DataError(f"{where}: 'entities' must be a list of {{start, end, label}}")
    words = _words_with_offsets(text)
    tags = ["O"] * len(words)
    starts = {start: i for i, (_, start, _) in enumerate(words)}
    ends = {end: i for i, (_, _, end) in enumerate(words)}
    for entity in sorted(entities, key=lambda e: e.get("start", 0) if isinstance(e, dict) else 0):
        if not isinstance(entity, dict) or not {"start", "end", "label"} <= set(entity):
            raise DataError(f"{where}: each entity needs 'start', 'end' and 'label', got {entity!r}")
        start, end, label = entity["start"], entity["end"], entity["label"]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise DataError(
                f"{where}: entity {entity!r} is not a span of the text (0 <= start < end <= {len(text)})"
            )
        if not isinstance(label, str) or not label or label == "O" or label[:2] in ("B-", "I-"):
            raise DataError(f"{where}: entity label {label!r} must be a bare type such as PER")
        first, last = starts.get(start), ends.get(end)
        if first is None or last is None:
            raise DataError(
                f"{where}: entity {text[start:end]!r} [{start}:{end}] "
                "does not start and end on word boundaries"
            )
        if any(tag != "O" for tag in tags[first : last + 1]):
            raise DataError(f"{where}: entity {text[start:end]!r} [{start}:{end}] overlaps another entity")
        tags[first : last + 1] = [f"B-{label}"] + [f"I-{label}"] * (last - first)
    return [word for word, _, _ in words], tags


def iter_jsonl(path: Path) -> Iterator[tuple[list[str], list[str], int]]:
    """(tokens, IOB2 tags, line) of a JSONL file in either the tokens/tags or the text/entities shape."""
    for record, where, number in formats.json_lines(path):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object")
        if "tokens" in record:
            tokens, tags = record.get("tokens"), record.get("tags")
            if not isinstance(tokens, list) or not isinstance(tags, list):
                raise DataError(f"{where}: 'tokens' and 'tags' must both be lists")
            if len(tokens) != len(tags):
                raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
            if not all(isinstance(t, str) and t.strip() for t in tokens):
                raise DataError(f"{where}: every token must be a non-empty string")
            for tag in tags:
                if not isinstance(tag, str):
                    raise DataError(f"{where}: tag {tag!r} is not a string (expected O, B-TYPE or I-TYPE)")
                _check_tag(tag, where)
            tags = iob1_to_iob2(tags)
        elif "text" in record:
            if not isinstance(record["text"], str):
                raise DataError(f"{where}: 'text' must be a string")
            tokens, tags = _tags_from_entities(record["text"], record.get("entities", []), where)
        else:
            raise DataError(f"{where}: expected keys 'tokens' and 'tags', or 'text' and 'entities'")
        if tokens:
            yield tokens, tags, number


def iter_file(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of one local file, CoNLL or JSONL."""
    try:
        if (kind := formats.detect(path)) is not None:  # Label Studio, doccano, spaCy (trainer/formats.py)
            for tokens, tags, number in formats.iter_records(path, kind):
                yield {"tokens": tokens, "tags": tags, "origin": f"{path}:{number}", "document": -number}
        elif _is_jsonl(path):
            for tokens, tags, number in iter_jsonl(path):
                yield {"tokens": tokens, "tags": tags, "origin": f"{path}:{number}", "document": -number}
        else:
            for sentence, number in iter_conll_lines(path):
                yield {
                    "tokens": sentence.tokens,
                    "tags": sentence.tags,
                    "origin": f"{path}:{number}",
                    "document": sentence.document,
                }
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None


def _generate(paths: list[str], fingerprint: str) -> Iterator[dict[str, Any]]:
    # ``fingerprint`` is unused here; it is part of the arguments so that datasets' cache key
    # changes with the files' content.
    del fingerprint
    for path in paths:
        yield from iter_file(Path(path))


def read_local(path: Path, *, cache_dir: Path | None) -> tuple[datasets.Dataset, str]:
    """One local file as a Dataset (Arrow on disk) and the sha256 of its content."""
    if next(iter_file(path), None) is None:
        raise DataError(f"{path}: no sentences found (empty dataset)")
    content_hash = sha256_file(path)
    fingerprint = hashlib.sha256(f"{READER_VERSION}:{path}:{content_hash}".encode()).hexdigest()[:32]
    try:
        dataset = datasets.Dataset.from_generator(
            _generate,
            features=FEATURES,
            gen_kwargs={"paths": [str(path)], "fingerprint": fingerprint},
            cache_dir=str(cache_dir) if cache_dir else None,
            fingerprint=fingerprint,
        )
    except Exception as exc:  # datasets wraps the reader's error; surface the DataError itself
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, DataError):
            raise DataError(str(cause)) from None
        raise
    return dataset, content_hash


# --- Hugging Face Hub -----------------------------------------------------------------------------


def _hub_split_name(names: Sequence[str], key: str) -> str | None:
    aliases = {"train": ["train"], "validation": ["validation", "valid", "dev"], "test": ["test"]}[key]
    return next((name for name in aliases if name in names), None)


def _hub_to_rows(dataset: datasets.Dataset, where: str) -> datasets.Dataset:
    """A hub split mapped to tokens / IOB2 string tags / origin, checking every tag."""
    columns = dataset.column_names
    tokens_col = next((c for c in ("tokens", "words") if c in columns), None)
    tags_col = next((c for c in ("ner_tags", "tags", "labels") if c in columns), None)
    if tokens_col is None or tags_col is None:
        raise DataError(f"{where}: expected a tokens column and a ner_tags column, found {columns}")
    feature = dataset.features[tags_col]
    inner = getattr(feature, "feature", None)
    names = list(inner.names) if isinstance(inner, datasets.ClassLabel) else None

    def convert(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out_tags = []
        for index, tags in zip(indices, batch[tags_col], strict=True):
            tags = [names[t] if names is not None else str(t) for t in tags]
            for tag in tags:
                _check_tag(tag, f"{where}, row {index + 1}")
            out_tags.append(iob1_to_iob2(tags))
        return {
            "tokens": batch[tokens_col],
            "tags": out_tags,
            "origin": [f"{where}, row {index + 1}" for index in indices],
            "document": [-1 - index for index in indices],  # hub rows carry no document boundaries
        }

    return dataset.map(convert, batched=True, with_indices=True, remove_columns=columns, features=FEATURES)


def read_hub(dataset_id: str, *, cache_dir: Path | None) -> tuple[dict[str, datasets.Dataset], str]:
    """The splits of a Hugging Face dataset (needs the hub, or its files in the local cache)."""
    name = dataset_id.removeprefix("hf:").removeprefix("//datasets/")
    if Path(name).exists():  # load_dataset would read a folder of that name here, outside the roots
        raise DataError(f"{dataset_id}: not a Hugging Face dataset id here (a local path has that name)")
    try:
        loaded = datasets.load_dataset(name, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # offline, unknown id, gated: all the same to the user
        raise DataError(
            f"{dataset_id}: not a local file or folder, and loading it as a Hugging Face dataset failed "
            f"({type(exc).__name__})"  # never the loader's text: it can quote files it found
        ) from None
    out = {}
    for key in SPLITS:
        split = _hub_split_name(list(loaded), key)
        if split is not None:
            out[key] = _hub_to_rows(loaded[split], f"{name} [{split}]")
    if "train" not in out:
        raise DataError(f"{dataset_id}: the dataset has no train split (splits: {list(loaded)})")
    fingerprint = hashlib.sha256(
        ("|".join(f"{k}:{v._fingerprint}" for k, v in sorted(out.items()))).encode()
    ).hexdigest()
    return out, fingerprint


# --- loading a run's data -------------------------------------------------------------------------


def label_list(types: set[str]) -> list[str]:
    """O first, then B-/I- pairs per type in alphabetical order: a stable order for the model head."""
    return ["O"] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in ("B", "I")]


def tag_counts(dataset: datasets.Dataset) -> dict[str, int]:
    """How often each tag occurs (computed by Arrow, without Python loops over tokens)."""
    table = dataset.with_format("arrow")[:]  # zero-copy unless the split is a view through indices
    flat = pc.list_flatten(table.column("tags"))
    counts = pc.value_counts(flat)
    return {item["values"].as_py(): item["counts"].as_py() for item in counts}


def hold_out_documents(
    dataset: datasets.Dataset, *, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split off about ``fraction`` of the sentences as whole documents, both parts in file order.

    A shuffled sentence split would scatter every document, and the encoder, which takes a
    sentence's neighbours in the data as its context, would train on sentences alone.
    """
    documents = dataset["document"] if "document" in dataset.column_names else [-1] * len(dataset)
    # A sentence with a negative id is its own document; so is every row of a file without ids.
    groups = [document if document >= 0 else -1 - row for row, document in enumerate(documents)]
    order = list(dict.fromkeys(groups))
    if len(order) < 2:  # one document only: hold out sentences, keeping the rest in order
        groups, order = list(range(len(dataset))), list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    sizes = Counter(groups)
    target = max(1, round(fraction * len(dataset)))
    held: set[int] = set()
    count = 0
    for group in order[:-1]:  # at least one group stays for training
        if count >= target:
            break
        held.add(group)
        count += sizes[group]
    validation = [row for row, group in enumerate(groups) if group in held]
    train = [row for row, group in enumerate(groups) if group not in held]
    return dataset.select(train), dataset.select(validation)


def load_data(
    spec: DataSpec,
    *,
    roots: Sequence[Path] | None,
    cache_dir: Path | None = None,
    validation_fraction: float = 0.1,
    seed: int = 42,
) -> LoadedData:
    """Read and check every split of ``spec``; the label set comes from the data."""
    splits: dict[str, datasets.Dataset] = {}
    hashes: list[str] = []
    sources: dict[str, str] = {}
    for key, ref in spec.as_dict().items():
        path = resolve_local(ref, roots=roots)
        if path is None:
            hub_splits, fingerprint = read_hub(ref, cache_dir=cache_dir)
            hashes.append(f"hub:{ref}:{fingerprint}")
            if key == "train":
                # A hub id for train brings its own validation/test unless given separately.
                for hub_key, dataset in hub_splits.items():
                    if hub_key == "train" or getattr(spec, hub_key) is None:
                        splits[hub_key] = dataset
                        sources[hub_key] = f"{ref} [{hub_key}]"
            else:
                splits[key] = hub_splits.get(key) or hub_splits["train"]
                sources[key] = ref
            continue
        if path.is_dir():
            files = split_files(path)
            if key != "train":
                files = {key: files.get(key) or files["train"]}
            for file_key, file_path in files.items():
                if file_key != key and getattr(spec, file_key) is not None:
                    continue  # given explicitly; the explicit reference wins
                splits[file_key], digest = read_local(file_path, cache_dir=cache_dir)
                hashes.append(f"{file_key}:{digest}")
                sources[file_key] = str(file_path)
        else:
            splits[key], digest = read_local(path, cache_dir=cache_dir)
            hashes.append(f"{key}:{digest}")
            sources[key] = str(path)

    from_train = False
    if "validation" not in splits:
        if len(splits["train"]) < 2:
            raise DataError(f"{sources['train']}: too few sentences to hold out a validation split")
        splits["train"], splits["validation"] = hold_out_documents(
            splits["train"], fraction=validation_fraction, seed=seed
        )
        sources["validation"] = (
            f"{validation_fraction:.0%} of {sources['train']} by whole documents (seed {seed})"
        )
        from_train = True
        hashes.append(f"split:{validation_fraction}:{seed}")

    counts: dict[str, int] = {}
    types: set[str] = set()
    for key, dataset in splits.items():
        split_counts = tag_counts(dataset)
        types |= {tag[2:] for tag in split_counts if tag != "O"}
        if key == "train":
            counts = split_counts
    if not any(tag != "O" for tag in counts):
        raise DataError(f"{sources['train']}: no entity tags in the training data (only O)")
    data_hash = hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()
    return LoadedData(
        splits=datasets.DatasetDict(splits),
        labels=label_list(types),
        data_hash=data_hash,
        sources=sources,
        validation_split_from_train=from_train,
        label_counts=counts,
    )


def first_origin_of(data: LoadedData, tags: set[str]) -> str:
    """Where the first sentence using any of ``tags`` is (for an error message)."""
    for key in SPLITS:
        if key not in data.splits:
            continue
        for batch in data.splits[key].iter(batch_size=1000):
            for sentence_tags, origin in zip(batch["tags"], batch["origin"], strict=True):
                found = tags & set(sentence_tags)
                if found:
                    return f"{origin}: tag {sorted(found)[0]!r}"
    return data.sources["train"]
