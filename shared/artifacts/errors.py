"""Errors of the artifact store, each with the HTTP status the gateway answers with."""

from __future__ import annotations

from shared.core.errors import ServiceError


class ArtifactError(ServiceError):
    """The artifact store could not do what was asked; the message says why (never a secret)."""

    status_code = 502


class ArtifactUnavailable(ArtifactError):
    """The store did not answer (network, credentials, bucket): try again later."""

    status_code = 503


class ArtifactMissing(ArtifactError):
    """An object the registry names is not in the store (deleted, or another store configured)."""

    status_code = 409


class ArtifactCorrupt(ArtifactError):
    """An object does not match its manifest (tampered or truncated): it is never served."""

    status_code = 409
