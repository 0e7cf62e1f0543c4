"""Reading CoNLL column files (IOB1 or IOB2) into sentences with IOB2 tags."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.training.errors import DataError


@dataclass(frozen=True)
class Sentence:
    tokens: list[str]
    tags: list[str]  # IOB2
    # Which document of the file the sentence is in (counted by -DOCSTART- lines): neighbours in
    # the same document are its context. Sentences before any -DOCSTART- are each their own
    # document (negative ids), so a file of unrelated sentences gets no context.
    document: int = 0


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 starts an entity with I- unless it follows one of the same type; IOB2 always uses B-."""
    out = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def _check_tag(tag: str, where: str) -> None:
    if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        raise DataError(f"{where}: tag {tag!r} is not IOB (expected O, B-TYPE or I-TYPE)")


def iter_conll_lines(path: str | Path) -> Iterator[tuple[Sentence, int]]:
    """Sentences of a CoNLL file with the line number of each sentence's first token.

    Token first, tag last, any number of columns between, blank lines between sentences,
    ``-DOCSTART-`` lines start a new document.
    """
    path = Path(path)
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0
    documents = 0
    sentences = 0

    def document() -> int:
        return documents if documents else -1 - sentences

    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if tokens:
                    yield Sentence(tokens, iob1_to_iob2(tags), document()), first_line
                    tokens, tags = [], []
                    sentences += 1
                continue
            columns = line.split()
            if columns[0] == "-DOCSTART-":
                if tokens:  # a document start right after a sentence, without a blank line
                    yield Sentence(tokens, iob1_to_iob2(tags), document()), first_line
                    tokens, tags = [], []
                    sentences += 1
                documents += 1
                continue
            if len(columns) < 2:
                raise DataError(f"{path}:{number}: expected 'token ... tag', got {line!r}")
            _check_tag(columns[-1], f"{path}:{number}")
            if not tokens:
                first_line = number
            tokens.append(columns[0])
            tags.append(columns[-1])
    if tokens:
        yield Sentence(tokens, iob1_to_iob2(tags), document()), first_line


def iter_conll(path: str | Path) -> Iterator[Sentence]:
    """Sentences of a CoNLL file: token first, tag last, blank lines between, -DOCSTART- skipped."""
    for sentence, _ in iter_conll_lines(path):
        yield sentence


def read_conll(path: str | Path, limit: int | None = None) -> list[Sentence]:
    """The first ``limit`` sentences of a CoNLL file (all when ``limit`` is None)."""
    sentences = []
    for sentence in iter_conll(path):
        if limit is not None and len(sentences) >= limit:
            break
        sentences.append(sentence)
    return sentences


def read_documents(path: str | Path) -> list[list[Sentence]]:
    """The documents of a CoNLL file, each a list of its sentences in order."""
    documents: list[list[Sentence]] = []
    for sentence in iter_conll(path):
        if not documents or documents[-1][-1].document != sentence.document:
            documents.append([])
        documents[-1].append(sentence)
    return documents
