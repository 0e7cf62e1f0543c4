"""Stream parsers for job input: JSONL, CSV/TSV and plain-text uploads, and JSON request bodies.

Each parser yields one ``IncomingDocument`` at a time and reads its input line by line (a line is
bounded by ``max_line_bytes``), so a file of any size is parsed in constant memory. Errors name the
line or the column; nothing is stored when one is raised (the caller's transaction rolls back).
"""

from __future__ import annotations

import csv
import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, BinaryIO

from shared.jobs.errors import InvalidSubmission, SubmissionTooLarge

MAX_ID_CHARS = 1000
UTF8_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class IncomingDocument:
    client_id: str
    text: str
    where: str  # "line 12" or "documents[3]": how an error names this document


class UploadFormat(enum.StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"
    text = "text"


_EXTENSIONS = {
    ".jsonl": UploadFormat.jsonl,
    ".ndjson": UploadFormat.jsonl,
    ".json": UploadFormat.jsonl,
    ".csv": UploadFormat.csv,
    ".tsv": UploadFormat.tsv,
    ".txt": UploadFormat.text,
    ".text": UploadFormat.text,
}
_CONTENT_TYPES = {
    "application/x-ndjson": UploadFormat.jsonl,
    "application/jsonl": UploadFormat.jsonl,
    "application/x-jsonlines": UploadFormat.jsonl,
    "text/csv": UploadFormat.csv,
    "text/tab-separated-values": UploadFormat.tsv,
    "text/plain": UploadFormat.text,
}


def detect_format(*, declared: str | None, filename: str | None, content_type: str | None) -> UploadFormat:
    """The upload's format: the ``format`` form field, else the file extension, else the part's type."""
    if declared:
        try:
            return UploadFormat(declared.strip().lower())
        except ValueError:
            choices = ", ".join(f.value for f in UploadFormat)
            raise InvalidSubmission(f"format: unknown format {declared!r}; use one of {choices}") from None
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in _CONTENT_TYPES:
        return _CONTENT_TYPES[media_type]
    raise InvalidSubmission(
        f"file: cannot tell the format of {filename or 'the upload'!r}; name it .jsonl, .csv, .tsv or .txt, "
        "or send a form field format=jsonl|csv|tsv|text"
    )


def read_lines(stream: BinaryIO, *, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """Decoded lines (terminator kept) with their 1-based numbers; strict UTF-8, bounded length."""
    lineno = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            raise SubmissionTooLarge(
                f"line {lineno}: longer than {max_line_bytes} bytes, more than a document may hold"
            )
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1].hex()
            raise InvalidSubmission(
                f"line {lineno}: not valid UTF-8 (byte 0x{bad} at byte {exc.start + 1}); "
                "save the file as UTF-8"
            ) from None
        if lineno == 1 and line.startswith(UTF8_BOM):
            line = line[1:]
        yield lineno, line


def _strip_terminator(line: str) -> str:
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith("\n"):
        return line[:-1]
    return line


def _client_id(value: Any, *, default: str, where: str) -> str:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidSubmission(f'{where}: "id" must be a string or an integer')
    client_id = str(value)
    if len(client_id) > MAX_ID_CHARS:
        raise InvalidSubmission(f'{where}: "id" is longer than {MAX_ID_CHARS} characters')
    return client_id


def _check_encodable(text: str, *, where: str) -> None:
    """JSON escapes can produce lone surrogates, which are not Unicode text and cannot be stored."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidSubmission(
                f"{where}: the text contains a lone surrogate escape (e.g. \\ud800), "
                "which is not valid Unicode"
            ) from None


def _from_object(obj: Any, *, default_id: str, where: str) -> IncomingDocument:
    if not isinstance(obj, dict):
        raise InvalidSubmission(f'{where}: expected a JSON object like {{"id": "...", "text": "..."}}')
    if "text" not in obj:
        raise InvalidSubmission(f'{where}: no "text" field')
    text = obj["text"]
    if not isinstance(text, str):
        raise InvalidSubmission(f'{where}: "text" must be a string')
    _check_encodable(text, where=where)
    client_id = _client_id(obj.get("id"), default=default_id, where=where)
    _check_encodable(client_id, where=where)
    return IncomingDocument(client_id=client_id, text=text, where=where)


def parse_jsonl(stream: BinaryIO, *, max_line_bytes: int) -> Iterator[IncomingDocument]:
    """One ``{"id", "text"}`` object a line; blank lines are skipped; ``id`` defaults to the line number."""
    for lineno, line in read_lines(stream, max_line_bytes=max_line_bytes):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if line.lstrip().startswith("["):
                hint = '; JSONL is one object a line (a JSON array goes in a JSON body {"documents": [...]})'
            raise InvalidSubmission(
                f"{where}: not valid JSON ({exc.msg} at column {exc.colno}){hint}"
            ) from None
        except RecursionError:
            raise InvalidSubmission(f"{where}: JSON nested too deeply") from None
        yield _from_object(obj, default_id=str(lineno), where=where)


def parse_text(stream: BinaryIO, *, max_line_bytes: int) -> Iterator[IncomingDocument]:
    """One document a line, kept as given; empty lines are skipped; ``id`` is the line number."""
    for lineno, line in read_lines(stream, max_line_bytes=max_line_bytes):
        text = _strip_terminator(line)
        if text:
            yield IncomingDocument(client_id=str(lineno), text=text, where=f"line {lineno}")


def parse_csv(
    stream: BinaryIO, *, max_line_bytes: int, max_field_chars: int, delimiter: str = ","
) -> Iterator[IncomingDocument]:
    """A header row with a ``text`` column (and optionally ``id``); quoted fields may span lines."""
    # Process-wide, but every caller sets the same bound: a field may hold one whole document.
    csv.field_size_limit(max(max_field_chars, 131072))
    position = {"line": 0}

    def lines() -> Iterator[str]:
        for lineno, line in read_lines(stream, max_line_bytes=max_line_bytes):
            position["line"] = lineno
            yield line

    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [name.strip().lower() for name in header]
        if "text" not in columns:
            found = ", ".join(repr(name) for name in header) or "none"
            raise InvalidSubmission(f"CSV header: no 'text' column (columns found: {found})")
        text_at = columns.index("text")
        id_at = columns.index("id") if "id" in columns else None
        record_start = position["line"] + 1
        for row in reader:
            where = f"line {record_start}"
            if row:
                if len(row) != len(header):
                    raise InvalidSubmission(f"{where}: {len(row)} fields, but the header has {len(header)}")
                raw_id = row[id_at] if id_at is not None and row[id_at] != "" else None
                client_id = _client_id(raw_id, default=str(record_start), where=where)
                yield IncomingDocument(client_id=client_id, text=row[text_at], where=where)
            record_start = position["line"] + 1
    except csv.Error as exc:
        where = f"line {position['line']}"
        if "field larger than field limit" in str(exc):
            raise SubmissionTooLarge(
                f"{where}: a field is longer than {max_field_chars} characters (NER_DOCUMENT_MAX_CHARS)"
            ) from None
        raise InvalidSubmission(f"{where}: malformed CSV ({exc})") from None


def parse_upload(
    stream: BinaryIO, *, fmt: UploadFormat, document_max_chars: int
) -> Iterator[IncomingDocument]:
    """Documents of an uploaded file in format ``fmt``."""
    # A UTF-8 character is at most 4 bytes and a JSON escape 6; a little room for the id and syntax.
    max_line_bytes = document_max_chars * 6 + 65536
    if fmt is UploadFormat.jsonl:
        return parse_jsonl(stream, max_line_bytes=max_line_bytes)
    if fmt is UploadFormat.text:
        return parse_text(stream, max_line_bytes=max_line_bytes)
    delimiter = "\t" if fmt is UploadFormat.tsv else ","
    return parse_csv(
        stream, max_line_bytes=max_line_bytes, max_field_chars=document_max_chars, delimiter=delimiter
    )


def from_json_documents(documents: Iterable[Any]) -> Iterator[IncomingDocument]:
    """Documents of a JSON body's ``documents`` array; ``id`` defaults to the 0-based index."""
    for index, obj in enumerate(documents):
        yield _from_object(obj, default_id=str(index), where=f"documents[{index}]")


def parse_retention(value: Any) -> int | None:
    """``retention_days`` of a JSON body or a form field: None when absent, else whole days."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidSubmission("retention_days: must be an integer number of days")
    try:
        return int(value)
    except ValueError:
        raise InvalidSubmission("retention_days: must be an integer number of days") from None


# Keys of a JSON job body besides documents and retention_days (shared/jobs/options.py).
JOB_OPTION_KEYS = (
    "offset_encoding", "labels", "exclude_labels", "min_score", "redact", "callback_url", "name",
)  # fmt: skip


@dataclass(frozen=True)
class JsonJob:
    documents: Iterator[IncomingDocument]
    retention_days: int | None
    options: dict[str, Any]  # the raw option fields present (checked by the service)


def parse_json_job(body: bytes) -> JsonJob:
    """A JSON job body: its documents (streamed), retention in days, and option fields."""
    payload = _json_payload(body)
    return JsonJob(
        documents=from_json_documents(payload["documents"]),
        retention_days=parse_retention(payload.get("retention_days")),
        options={key: payload[key] for key in JOB_OPTION_KEYS if payload.get(key) is not None},
    )


def parse_json_submission(body: bytes) -> tuple[Iterator[IncomingDocument], int | None]:
    """A JSON job body: its documents (streamed) and its retention in days."""
    job = parse_json_job(body)
    return job.documents, job.retention_days


def _json_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidSubmission(
            f"body: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise InvalidSubmission("body: not valid UTF-8") from None
    except RecursionError:
        raise InvalidSubmission("body: JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise InvalidSubmission('body: expected an object like {"documents": [{"id": "...", "text": "..."}]}')
    if not isinstance(payload.get("documents"), list):
        raise InvalidSubmission('documents: required, a list of {"id", "text"} objects')
    return payload
