"""Reading a job's results: keyset pages, a stream of every row, and entity counts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC
from typing import Any

from sqlalchemy import Row, select, text
from sqlalchemy.orm import Session

from shared.core.tables import JobDocument, JobResult
from shared.jobs.cursors import decode_seq_cursor, encode_cursor
from shared.predict.schemas import ENTITY_FIELDS

STREAM_PAGE_ROWS = 1000


def _page_query(job_id: uuid.UUID, after_seq: int, limit: int, include_text: bool = False):  # type: ignore[no-untyped-def]
    columns = [
        JobResult.seq,
        JobDocument.client_id,
        JobResult.status,
        JobResult.entities,
        JobResult.error,
        JobResult.model_version,
        JobResult.processed_at,
        JobResult.redacted_text,
    ]
    if include_text:  # only then: a page of long documents is mostly their text
        columns.append(JobDocument.text)
    return (
        select(*columns)
        .join(JobDocument, (JobDocument.job_id == JobResult.job_id) & (JobDocument.seq == JobResult.seq))
        .where(JobResult.job_id == job_id, JobResult.seq > after_seq)
        .order_by(JobResult.seq)
        .limit(limit)
    )


def result_item(row: Row[Any]) -> dict[str, Any]:
    """One result as the API shows it (the same in JSON pages and NDJSON lines).

    ``text`` only when asked for (include_text), ``redacted_text`` only for a job that redacts.
    """
    processed_at = row.processed_at
    if processed_at.tzinfo is None:  # SQLite: stored as UTC without an offset
        processed_at = processed_at.replace(tzinfo=UTC)
    item = {
        "id": row.client_id,
        "seq": row.seq,
        "status": row.status.value,
        # JSONB reorders keys; show them in the order of /predict.
        "entities": [{key: entity[key] for key in ENTITY_FIELDS} for entity in row.entities],
        "error": row.error,
        "model_version": row.model_version,
        "processed_at": processed_at.isoformat().replace("+00:00", "Z"),
    }
    if "text" in row._fields:
        item["text"] = row.text
    if row.redacted_text is not None:
        item["redacted_text"] = row.redacted_text
    return item


def list_results(
    *, session: Session, job_id: uuid.UUID, cursor: str | None, limit: int, include_text: bool = False
) -> tuple[list[dict[str, Any]], str | None]:
    """Processed documents in document order, after ``cursor``; returns them and the next cursor.

    Only processed documents appear; while a job runs, a page ends at what is done so far.
    """
    after = -1
    if cursor:
        after = decode_seq_cursor(cursor)
    rows = list(session.execute(_page_query(job_id, after, limit + 1, include_text)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].seq)
    return [result_item(row) for row in rows], next_cursor


def iter_results(
    *, session: Session, job_id: uuid.UUID, include_text: bool = False
) -> Iterator[dict[str, Any]]:
    """Every processed document of the job, page by page (memory bounded by one page)."""
    after = -1
    while True:
        rows = list(session.execute(_page_query(job_id, after, STREAM_PAGE_ROWS, include_text)))
        for row in rows:
            yield result_item(row)
        if len(rows) < STREAM_PAGE_ROWS:
            return
        after = rows[-1].seq


_ENTITY_COUNTS = {
    "postgresql": """
        SELECT e.value->>'word' AS text, e.value->>'entity_group' AS type,
               count(*) AS mentions, count(DISTINCT r.seq) AS documents
        FROM job_results r CROSS JOIN LATERAL jsonb_array_elements(r.entities) AS e(value)
        WHERE r.job_id = :job_id
          AND (CAST(:type AS text) IS NULL OR e.value->>'entity_group' = CAST(:type AS text))
        GROUP BY 1, 2 ORDER BY mentions DESC, documents DESC, text, type LIMIT :limit
    """,
    "sqlite": """
        SELECT json_extract(e.value, '$.word') AS text, json_extract(e.value, '$.entity_group') AS type,
               count(*) AS mentions, count(DISTINCT r.seq) AS documents
        FROM job_results r, json_each(r.entities) AS e
        WHERE r.job_id = :job_id AND (:type IS NULL OR json_extract(e.value, '$.entity_group') = :type)
        GROUP BY 1, 2 ORDER BY mentions DESC, documents DESC, text, type LIMIT :limit
    """,
}


def aggregate_entities(
    *, session: Session, job_id: uuid.UUID, entity_type: str | None, limit: int
) -> list[dict[str, Any]]:
    """Each distinct (entity text, type) of the job's results with its mention and document counts."""
    dialect = session.get_bind().dialect.name
    job_key: Any = job_id if dialect == "postgresql" else job_id.hex
    rows = session.execute(
        text(_ENTITY_COUNTS[dialect]), {"job_id": job_key, "type": entity_type, "limit": limit}
    )
    return [
        {"text": row.text, "type": row.type, "count": row.mentions, "documents": row.documents}
        for row in rows
    ]
