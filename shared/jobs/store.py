"""Writing a job's documents in batches, and planning its chunks as the documents stream by."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared.core.tables import JobDocument

# Rows per INSERT batch where COPY is not available (SQLite).
INSERT_BATCH_ROWS = 1000
INSERT_BATCH_CHARS = 4_000_000


class DocumentWriter:
    """Appends documents of one job inside the caller's transaction, never holding more than a batch.

    On PostgreSQL it streams rows through ``COPY ... FROM STDIN`` (psycopg buffers a few kilobytes),
    elsewhere it inserts batches of rows. Use as a context manager; leaving it flushes the rest.
    """

    def __init__(self, session: Session, job_id: uuid.UUID) -> None:
        self._session = session
        self._job_id = job_id
        self._batch: list[dict[str, Any]] = []
        self._batch_chars = 0
        self._copy_cm: Any = None
        self._copy: Any = None
        self._cursor: Any = None

    def __enter__(self) -> DocumentWriter:
        connection = self._session.connection()
        if connection.dialect.name == "postgresql":
            raw = connection.connection.driver_connection
            self._cursor = raw.cursor()
            self._copy_cm = self._cursor.copy("COPY job_documents (job_id, seq, client_id, text) FROM STDIN")
            self._copy = self._copy_cm.__enter__()
        return self

    def write(self, seq: int, client_id: str, text: str) -> None:
        if self._copy is not None:
            self._copy.write_row((self._job_id, seq, client_id, text))
            return
        self._batch.append({"job_id": self._job_id, "seq": seq, "client_id": client_id, "text": text})
        self._batch_chars += len(text)
        if len(self._batch) >= INSERT_BATCH_ROWS or self._batch_chars >= INSERT_BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._session.execute(insert(JobDocument), self._batch)
            self._batch = []
            self._batch_chars = 0

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._copy_cm is not None:
            try:
                # On an error psycopg ends the COPY with a failure; the transaction is rolled back.
                self._copy_cm.__exit__(exc_type, exc, tb)
            finally:
                self._cursor.close()
        elif exc_type is None:
            self._flush()


@dataclass(slots=True)
class PlannedChunk:
    index: int
    seq_start: int
    seq_end: int  # exclusive
    chars: int


@dataclass
class ChunkPlanner:
    """Cuts the document sequence into chunks bounded by total characters and by document count.

    A document longer than ``max_chars`` gets a chunk of its own (the engine windows it).
    """

    max_chars: int
    max_documents: int
    chunks: list[PlannedChunk] = field(default_factory=list)
    _open: PlannedChunk | None = None

    def add(self, seq: int, chars: int) -> None:
        current = self._open
        if current is not None and (
            current.chars + chars > self.max_chars
            or current.seq_end - current.seq_start >= self.max_documents
        ):
            self.chunks.append(current)
            current = None
        if current is None:
            current = PlannedChunk(index=len(self.chunks), seq_start=seq, seq_end=seq, chars=0)
        current.seq_end = seq + 1
        current.chars += chars
        self._open = current

    def finish(self) -> list[PlannedChunk]:
        if self._open is not None:
            self.chunks.append(self._open)
            self._open = None
        return self.chunks
