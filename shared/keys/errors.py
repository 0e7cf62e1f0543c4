"""Errors of API-key checks, each with the HTTP status (and headers) the gateway answers with."""

from __future__ import annotations

from shared.core.errors import ServiceError


class AccessError(ServiceError):
    """A caller refused because of its key."""


class Unauthenticated(AccessError):
    """Missing, unknown or revoked key."""

    status_code = 401

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        challenge = 'Bearer realm="ner"' + (f', error="{error}"' if error else ', charset="UTF-8"')
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(AccessError):
    """The key's scope does not cover the route."""

    status_code = 403


class RateLimited(AccessError):
    status_code = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class KeyNotFound(AccessError, LookupError):
    status_code = 404


class InvalidKeySettings(AccessError, ValueError):
    """A key created with settings out of range (its rate limit, say)."""

    status_code = 422
