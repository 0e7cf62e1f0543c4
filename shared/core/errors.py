"""The base of every domain's errors: each carries the HTTP status the gateway answers with.

A domain raises its own subclass (``JobNotFound``, ``DataError``, ``CorruptVersion``, ...); the
gateway has one exception handler that turns any of them into ``{"detail": message}`` with
``status_code`` (and ``headers``), so routers hold no try/except of their own.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request a domain refuses; the message says what is wrong in the caller's terms."""

    status_code: int = 400
    headers: dict[str, str] | None = None
