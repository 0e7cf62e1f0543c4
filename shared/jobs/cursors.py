"""Opaque keyset-pagination cursors: URL-safe base64 of a small JSON list."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from shared.jobs.errors import InvalidRequest


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, arity: int) -> list[Any]:
    """The values of a cursor this API returned; 422 for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != arity:
        raise InvalidRequest("cursor: not a cursor returned by this API (use next_cursor as given)")
    return values


# A document's seq is a 32-bit integer column: anything outside would reach the database as an error.
_MAX_SEQ = 2**31 - 1


def decode_seq_cursor(cursor: str) -> int:
    """The document seq a results cursor holds; 422 for a boolean, a float, a string or out of range."""
    (value,) = decode_cursor(cursor, arity=1)
    # bool is an int subclass: [true] must not pass as seq 1.
    if type(value) is not int or not -1 <= value <= _MAX_SEQ:
        raise InvalidRequest("cursor: not a cursor returned by this API (use next_cursor as given)")
    return value


def decode_jobs_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a jobs-list cursor holds; 422 for anything else."""
    created, job_id = decode_cursor(cursor, arity=2)
    try:
        if not isinstance(created, str) or not isinstance(job_id, str):
            raise TypeError(created, job_id)
        return datetime.fromisoformat(created), uuid.UUID(job_id)  # naive on SQLite
    except (TypeError, ValueError):
        raise InvalidRequest("cursor: not a cursor returned by this API (use next_cursor as given)") from None
