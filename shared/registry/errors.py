"""Errors of the registry, each with the HTTP status the gateway answers with."""

from __future__ import annotations

from shared.core.errors import ServiceError


class RegistryError(ServiceError):
    """A registry operation that cannot be done; the message says why."""

    status_code = 400


class VersionNotFound(RegistryError):
    status_code = 404


class CorruptVersion(RegistryError):
    """The version's folder is missing or does not hold a loadable model; nothing changed."""

    status_code = 409


class ActivationConflict(RegistryError):
    """Another activation won a race with this one; nothing of this one changed."""

    status_code = 409


class ImportRefused(RegistryError):
    """A model that cannot be imported (not found, not loadable, pickle-only); nothing was registered."""

    status_code = 422


class ImportUnavailable(RegistryError):
    """This process cannot check a model (it loads none); another one can."""

    status_code = 503
