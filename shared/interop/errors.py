"""Errors of the protocol adapters, each with the HTTP status the gateway answers with."""

from __future__ import annotations

from shared.core.errors import ServiceError


class InteropError(ServiceError):
    """A request in another tool's protocol that cannot be answered; the message says why."""


class InvalidRequest(InteropError):
    """A body that parses but breaks the protocol (a tensor's shape, its datatype, a task's text)."""

    status_code = 400


class ModelNotFound(InteropError):
    """A model name or version this service does not serve."""

    status_code = 404


class NotConfigured(InteropError):
    """A feature whose settings are not set (Label Studio's URL and token, say)."""

    status_code = 503


class Unavailable(InteropError):
    """Something this service needs is down (Redis, for the annotation count)."""

    status_code = 503


class UpstreamError(InteropError):
    """Another tool's API (Label Studio's) refused or failed a call this service made."""

    status_code = 502
