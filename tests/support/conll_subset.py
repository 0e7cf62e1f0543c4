"""Small CoNLL files cut from the shared CoNLL-2003 data, for training tests that take seconds."""

from __future__ import annotations

from pathlib import Path

from trainer.conll import Sentence, read_conll


def write_conll(path: Path, sentences: list[Sentence]) -> Path:
    """Write sentences in the two-column CoNLL format (IOB2 tags)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = [
        "\n".join(f"{token} {tag}" for token, tag in zip(s.tokens, s.tags, strict=True)) for s in sentences
    ]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def conll_subset(
    conll_dir: Path, folder: Path, *, train: int = 200, validation: int = 50, test: int = 50
) -> Path:
    """train.conll / dev.conll / test.conll with entity-bearing sentences of at most 30 words."""

    def pick(name: str, count: int) -> list[Sentence]:
        pool = [s for s in read_conll(conll_dir / name, limit=count * 4) if any(t != "O" for t in s.tags)]
        return [s for s in pool if len(s.tokens) <= 30][:count]

    write_conll(folder / "train.conll", pick("eng.train", train))
    write_conll(folder / "dev.conll", pick("eng.testa", validation))
    write_conll(folder / "test.conll", pick("eng.testb", test))
    return folder
