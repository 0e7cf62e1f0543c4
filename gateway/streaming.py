"""NDJSON bodies streamed from the database (job results, job diffs)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from shared.core.db import get_sessionmaker

NDJSON = "application/x-ndjson"
LINES_PER_WRITE = 500


def _lines(items: Callable[[Session], Iterable[dict[str, Any]]]) -> Iterator[bytes]:
    # A session of its own: the request's session is closed before a streamed body is sent.
    with get_sessionmaker()() as session:
        lines: list[str] = []
        for item in items(session):
            lines.append(json.dumps(item, ensure_ascii=False))
            if len(lines) >= LINES_PER_WRITE:
                yield ("\n".join(lines) + "\n").encode()
                lines = []
        if lines:
            yield ("\n".join(lines) + "\n").encode()


def ndjson_response(items: Callable[[Session], Iterable[dict[str, Any]]]) -> StreamingResponse:
    """One JSON object a line, read in a session opened when the body is sent."""
    return StreamingResponse(_lines(items), media_type=NDJSON)
