"""Opaque keyset-pagination cursors: URL-safe base64 of a small JSON list."""

from __future__ import annotations

import base64
import binascii
import json
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
