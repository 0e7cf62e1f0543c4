"""What changed between two runs of the same documents: the documents whose entities differ (issue 15).

Per document, job a's entities are matched with job b's: the same start, end and type are
unchanged; the same span with another type is *retyped*; overlapping spans with other offsets are a
*boundary* change; the rest of a's are *removed* and the rest of b's *added*. Counts by type: an
added entity by its own type, the other changes by job a's type. A document that is not ``done`` in
both jobs is listed only when its statuses differ, with no entity changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, func, literal_column, not_, select
from sqlalchemy.orm import Session, aliased

from shared.core.tables import DocumentStatus, Job, JobDocument, JobResult
from shared.jobs import lifecycle, service
from shared.jobs.cursors import decode_seq_cursor, encode_cursor
from shared.jobs.errors import JobConflict
from shared.jobs.rerun import root_of
from shared.keys.owner import Owner
from shared.predict.schemas import ENTITY_FIELDS

SCAN_ROWS = 1000  # result pairs read per query while looking for differing documents
CHANGES = ("added", "removed", "retyped", "boundary")

Entity = dict[str, Any]


def _clean(entity: Entity) -> Entity:
    # JSONB reorders keys; show them in the order of /predict.
    return {key: entity[key] for key in ENTITY_FIELDS if key in entity}


def _overlap(a: Entity, b: Entity) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def diff_entities(before: list[Entity], after: list[Entity]) -> dict[str, list[Any]]:
    """The changes from ``before`` (job a) to ``after`` (job b) of one document."""
    left = sorted((_clean(e) for e in before), key=lambda e: (e["start"], e["end"], e["entity_group"]))
    right = sorted((_clean(e) for e in after), key=lambda e: (e["start"], e["end"], e["entity_group"]))
    used_left = [False] * len(left)
    used_right = [False] * len(right)

    def pair(test: Any) -> list[dict[str, Entity]]:
        pairs = []
        for i, a in enumerate(left):
            if used_left[i]:
                continue
            for j, b in enumerate(right):
                if not used_right[j] and test(a, b):
                    used_left[i] = used_right[j] = True
                    pairs.append({"before": a, "after": b})
                    break
        return pairs

    pair(lambda a, b: (a["start"], a["end"], a["entity_group"]) == (b["start"], b["end"], b["entity_group"]))
    retyped = pair(lambda a, b: (a["start"], a["end"]) == (b["start"], b["end"]))
    boundary = pair(_overlap)
    return {
        "added": [b for j, b in enumerate(right) if not used_right[j]],
        "removed": [a for i, a in enumerate(left) if not used_left[i]],
        "retyped": retyped,
        "boundary": boundary,
    }


def count_changes(changes: dict[str, list[Any]], into: dict[str, dict[str, int]]) -> None:
    """Add a document's changes to per-type counts."""
    for change in CHANGES:
        for item in changes[change]:
            entity = item if change == "added" else item.get("before", item)
            row = into.setdefault(entity["entity_group"], dict.fromkeys(CHANGES, 0))
            row[change] += 1


def _counts_list(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    rows = [{"type": name, **values} for name, values in counts.items()]
    return sorted(rows, key=lambda r: (-sum(r[c] for c in CHANGES), r["type"]))


def check_comparable(*, session: Session, job_a: Job, job_b: Job) -> None:
    """409 unless the two jobs ran over the same stored documents (one re-runs the other, or both one job)."""
    if root_of(session=session, job_id=job_a.id) != root_of(session=session, job_id=job_b.id):
        raise JobConflict(
            f"jobs {job_a.id} and {job_b.id} do not hold the same documents: a diff compares a job with "
            "its re-runs (POST /jobs/{id}/rerun)"
        )


def load_pair(*, session: Session, job_a: str, job_b: str, owner: Owner) -> tuple[Job, Job]:
    """Both jobs, each visible to ``owner`` (404 otherwise) and over the same documents (409 otherwise)."""
    a = service.get_job(session=session, job_id=job_a, owner=owner)
    b = service.get_job(session=session, job_id=job_b, owner=owner)
    check_comparable(session=session, job_a=a, job_b=b)
    return a, b


def _spans(entities: Any, key: str) -> Any:
    return func.jsonb_path_query_array(entities, literal_column(f"'$[*].{key}'::jsonpath"))


def _maybe_changed(result_a: Any, result_b: Any) -> Any:
    """PostgreSQL: leave out, inside the database, documents whose statuses and entity spans and
    types are equal in the same order (most of a re-run). Python still decides for the rest."""
    same = and_(
        result_a.status == result_b.status,
        *(
            _spans(result_a.entities, key).is_not_distinct_from(_spans(result_b.entities, key))
            for key in ("start", "end", "entity_group")
        ),
    )
    return not_(same)


def _pairs(job_a: uuid.UUID, job_b: uuid.UUID) -> tuple[Any, Any]:
    result_b = aliased(JobResult)
    joined = and_(result_b.job_id == job_b, result_b.seq == JobResult.seq)
    return result_b, joined


def count_compared(*, session: Session, job_a: uuid.UUID, job_b: uuid.UUID) -> int:
    """Documents both jobs processed (done or failed)."""
    result_b, joined = _pairs(job_a, job_b)
    query = (
        select(func.count()).select_from(JobResult).join(result_b, joined).where(JobResult.job_id == job_a)
    )
    return int(session.scalar(query) or 0)


def _rows(session: Session, job_a: uuid.UUID, job_b: uuid.UUID, after: int) -> Iterator[Any]:
    """Pairs of results (documents done or failed in both jobs) that may differ, in document order."""
    result_b, joined = _pairs(job_a, job_b)
    postgres = session.get_bind().dialect.name == "postgresql"
    while True:
        query = (
            select(
                JobResult.seq,
                JobDocument.client_id,
                JobResult.status.label("status_a"),
                JobResult.entities.label("entities_a"),
                result_b.status.label("status_b"),
                result_b.entities.label("entities_b"),
            )
            .join(result_b, joined)
            .join(JobDocument, and_(JobDocument.job_id == JobResult.job_id, JobDocument.seq == JobResult.seq))
            .where(JobResult.job_id == job_a, JobResult.seq > after)
            .order_by(JobResult.seq)
            .limit(SCAN_ROWS)
        )
        if postgres:
            query = query.where(_maybe_changed(JobResult, result_b))
        rows = list(session.execute(query))
        yield from rows
        if len(rows) < SCAN_ROWS:
            return
        after = rows[-1].seq


def _item(row: Any) -> dict[str, Any] | None:
    """The diff item of one document, or None when nothing changed."""
    status_a, status_b = DocumentStatus(row.status_a), DocumentStatus(row.status_b)
    if status_a == DocumentStatus.done and status_b == DocumentStatus.done:
        changes = diff_entities(row.entities_a or [], row.entities_b or [])
        if not any(changes[c] for c in CHANGES):
            return None
    elif status_a == status_b:
        return None
    else:
        changes = {c: [] for c in CHANGES}
    counts: dict[str, dict[str, int]] = {}
    count_changes(changes, counts)
    return {
        "seq": row.seq,
        "id": row.client_id,
        "status_a": status_a.value,
        "status_b": status_b.value,
        **changes,
        "counts": _counts_list(counts),
    }


def iter_diff(
    *, session: Session, job_a: uuid.UUID, job_b: uuid.UUID, after: int = -1
) -> Iterator[dict[str, Any]]:
    """Every differing document after seq ``after``, in document order (memory bounded by one scan)."""
    for row in _rows(session, job_a, job_b, after):
        item = _item(row)
        if item is not None:
            yield item


def summary(*, session: Session, job_a: uuid.UUID, job_b: uuid.UUID) -> dict[str, Any]:
    """Documents compared and changed, and changes by type, over everything both jobs processed."""
    changed = 0
    counts: dict[str, dict[str, int]] = {}
    for row in _rows(session, job_a, job_b, -1):
        item = _item(row)
        if item is None:
            continue
        changed += 1
        for entry in item["counts"]:
            target = counts.setdefault(entry["type"], dict.fromkeys(CHANGES, 0))
            for change in CHANGES:
                target[change] += entry[change]
    return {
        "documents_compared": count_compared(session=session, job_a=job_a, job_b=job_b),
        "documents_changed": changed,
        "per_type": _counts_list(counts),
    }


def diff_page(*, session: Session, job_a: Job, job_b: Job, cursor: str | None, limit: int) -> dict[str, Any]:
    """One page of differing documents (keyset cursor on seq, as ``/results``); the summary on the first."""
    after = decode_seq_cursor(cursor) if cursor else -1
    items: list[dict[str, Any]] = []
    next_cursor = None
    for item in iter_diff(session=session, job_a=job_a.id, job_b=job_b.id, after=after):
        if len(items) == limit:  # one more exists: there is a next page
            next_cursor = encode_cursor(items[-1]["seq"])
            break
        items.append(item)
    return {
        "job_a": job_a.id,
        "job_b": job_b.id,
        "model_version_a": job_a.model_version,
        "model_version_b": job_b.model_version,
        "complete": job_a.status in lifecycle.FINISHED and job_b.status in lifecycle.FINISHED,
        "summary": None if cursor else summary(session=session, job_a=job_a.id, job_b=job_b.id),
        "items": items,
        "next_cursor": next_cursor,
    }
