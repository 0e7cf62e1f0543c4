"""Errors of shadow traffic, re-runs and diffs, each with the HTTP status the gateway answers with."""

from __future__ import annotations

from shared.core.errors import ServiceError


class ShadowError(ServiceError):
    """A shadow, re-run or diff request that cannot be done; the message says why."""

    status_code = 400


class InvalidShadowRequest(ShadowError):
    """A malformed field (the message names it)."""

    status_code = 422


class ShadowVersionNotFound(ShadowError):
    """No such model version (or, for a re-run, none the job could be pinned to)."""

    status_code = 404


class ShadowConflict(ShadowError):
    """The request contradicts the state: shadowing the active version, diffing unrelated jobs."""

    status_code = 409
