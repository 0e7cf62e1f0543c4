"""Training data: CoNLL (IOB1/IOB2), JSONL in both shapes, folders, hub rows, and bad input named by line."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from shared.training.errors import DataError
from shared.training.references import DataSpec, check_references, split_files
from trainer.data import _hub_to_rows, load_data

CONLL_IOB1 = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
in IN I-PP O
Bonn NNP I-NP I-LOC
Paris NNP I-NP B-LOC
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _load(tmp_path: Path, spec: DataSpec, **kwargs) -> object:  # type: ignore[no-untyped-def]
    return load_data(spec, roots=[tmp_path], cache_dir=tmp_path / "cache", **kwargs)


def _rows(dataset: datasets.Dataset) -> list[tuple[list[str], list[str]]]:
    return [(row["tokens"], row["tags"]) for row in dataset]


def test_conll_iob1_becomes_iob2_and_label_set_comes_from_data(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.conll", CONLL_IOB1)
    data = _load(tmp_path, DataSpec(train=str(train), validation=str(train)))
    assert _rows(data.splits["train"]) == [
        (["EU", "rejects", "German", "call", "."], ["B-ORG", "O", "B-MISC", "O", "O"]),
        # Two adjacent locations: IOB1 marks the second with B-; IOB2 starts both with B-.
        (["Peter", "Blackburn", "in", "Bonn", "Paris"], ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]),
    ]
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert data.label_counts["B-LOC"] == 2 and data.label_counts["O"] == 4
    assert data.splits["train"][1]["origin"] == f"{train}:9"


def test_jsonl_tokens_tags_and_text_entities(tmp_path: Path) -> None:
    lines = [
        {"tokens": ["Kofi", "Annan", "spoke"], "tags": ["B-PER", "I-PER", "O"]},
        {"text": "Google was founded in California.", "entities": [
            {"start": 0, "end": 6, "label": "ORG"}, {"start": 22, "end": 32, "label": "LOC"}]},
    ]  # fmt: skip
    train = _write(tmp_path / "train.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    data = _load(tmp_path, DataSpec(train=str(train), validation=str(train)))
    assert _rows(data.splits["train"]) == [
        (["Kofi", "Annan", "spoke"], ["B-PER", "I-PER", "O"]),
        (["Google", "was", "founded", "in", "California", "."], ["B-ORG", "O", "O", "O", "B-LOC", "O"]),
    ]
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_folder_splits_by_name_and_hash_follows_content(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    _write(folder / "eng.train", CONLL_IOB1)
    _write(folder / "eng.testa", "Bonn I-LOC\n")
    _write(folder / "eng.testb", "Paris I-LOC\n")
    _write(folder / "README.md", "not data")
    assert set(split_files(folder)) == {"train", "validation", "test"}
    first = _load(tmp_path, DataSpec(train="corpus"))  # relative to a data root
    assert {key: len(split) for key, split in first.splits.items()} == {
        "train": 2,
        "validation": 1,
        "test": 1,
    }
    assert first.sources["validation"].endswith("eng.testa")
    _write(folder / "eng.testb", "Berlin I-LOC\n")
    second = _load(tmp_path, DataSpec(train="corpus"))
    assert second.data_hash != first.data_hash
    assert second.splits["test"][0]["tokens"] == ["Berlin"]  # no stale cache after the edit


def test_seeded_validation_split_is_reproducible(tmp_path: Path) -> None:
    sentences = "\n\n".join(f"w{i} O\nCity{i} B-LOC" for i in range(50))
    train = _write(tmp_path / "train.conll", sentences + "\n")
    one = _load(tmp_path, DataSpec(train=str(train)), seed=7, validation_fraction=0.2)
    two = _load(tmp_path, DataSpec(train=str(train)), seed=7, validation_fraction=0.2)
    other = _load(tmp_path, DataSpec(train=str(train)), seed=8, validation_fraction=0.2)
    assert len(one.splits["validation"]) == 10 and len(one.splits["train"]) == 40
    assert _rows(one.splits["validation"]) == _rows(two.splits["validation"])
    assert _rows(one.splits["validation"]) != _rows(other.splits["validation"])
    assert one.validation_split_from_train


def test_validation_split_holds_out_whole_documents_in_file_order(tmp_path: Path) -> None:
    # Shuffled sentences would leave every training sentence without its neighbours (no context).
    documents = [
        "-DOCSTART- -X- O O\n\n" + "\n\n".join(f"d{d}s{s} O\nCity{d} B-LOC" for s in range(5))
        for d in range(20)
    ]
    train = _write(tmp_path / "train.conll", "\n\n".join(documents) + "\n")
    loaded = _load(tmp_path, DataSpec(train=str(train)), seed=3, validation_fraction=0.2)
    held, kept = loaded.splits["validation"], loaded.splits["train"]
    assert len(held) == 20 and len(kept) == 80
    assert all(held["document"].count(d) == 5 for d in set(held["document"]))
    assert set(held["document"]).isdisjoint(kept["document"])
    for part in (held, kept):
        lines = [int(origin.rsplit(":", 1)[1]) for origin in part["origin"]]
        assert lines == sorted(lines)
    assert "by whole documents" in loaded.sources["validation"]


def test_hub_rows_map_class_labels_to_iob2_names() -> None:
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    raw = datasets.Dataset.from_dict(
        {"id": ["0"], "tokens": [["Kofi", "Annan", "in", "Accra"]], "ner_tags": [[1, 2, 0, 4]]},
        features=features,
    )
    rows = _hub_to_rows(raw, "someone/ner [train]")
    # The hub's I- at the start of an entity (IOB1 style) is normalised to B-.
    assert _rows(rows) == [(["Kofi", "Annan", "in", "Accra"], ["B-PER", "I-PER", "O", "B-LOC"])]
    assert rows[0]["origin"] == "someone/ner [train], row 1"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.conll", "EU B-ORG\nrejects O\n\nfoo BAD-X\n", "bad.conll:4: tag 'BAD-X' is not IOB"),
        ("short.conll", "EU B-ORG\nrejects\n", "short.conll:2: expected 'token ... tag'"),
        ("empty.conll", "\n\n-DOCSTART- -X- O O\n\n", "empty.conll: no sentences found"),
        ("onlyo.conll", "the O\ncat O\n\na O\n", "onlyo.conll: no entity tags"),
        ("bad.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n',
         "bad.jsonl:2: 2 tokens but 1 tags"),
        ("tag.jsonl", '{"tokens": ["a"], "tags": ["PER"]}\n', "tag.jsonl:1: tag 'PER' is not IOB"),
        ("span.jsonl", '{"text": "Kofi Annan", "entities": [{"start": 0, "end": 3, "label": "PER"}]}\n',
         "span.jsonl:1: entity 'Kof' [0:3] does not start and end on word boundaries"),
        ("json.jsonl", '{"tokens": ["a"], "tags": ["B-X"]}\n{not json\n', "json.jsonl:2: not valid JSON"),
        ("latin1.conll", None, "latin1.conll:2: not UTF-8"),
    ],
)  # fmt: skip
def test_bad_input_fails_naming_file_and_line(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is None:
        path.write_bytes("Bonn B-LOC\nK\xf6ln B-LOC\n".encode("latin-1"))
    else:
        _write(path, content)
    with pytest.raises(DataError) as error:
        _load(tmp_path, DataSpec(train=str(path)))
    assert message in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_paths_outside_the_data_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = _write(tmp_path / "elsewhere" / "train.conll", CONLL_IOB1)
    _write(root / "ok.conll", CONLL_IOB1)
    (root / "link.conll").symlink_to(outside)
    for ref in (str(outside), "../elsewhere/train.conll", "link.conll", "/etc/passwd"):
        with pytest.raises(DataError, match="outside the allowed data folders"):
            check_references(DataSpec(train=ref), roots=[root])
    with pytest.raises(DataError, match=r"missing\.conll: no such file"):
        check_references(DataSpec(train="missing.conll"), roots=[root])
    check_references(DataSpec(train="ok.conll"), roots=[root])
    check_references(DataSpec(train=str(root / "ok.conll")), roots=[root])


def test_data_spec_parse_refuses_unknown_splits() -> None:
    assert DataSpec.parse({"train": "a", "validation": "b"}) == DataSpec("a", "b", None)
    assert DataSpec.parse("folder") == DataSpec("folder")
    with pytest.raises(DataError, match="unknown split"):
        DataSpec.parse({"train": "a", "dev": "b"})
