"""Errors of the training service, each with the HTTP status the gateway answers with."""

from __future__ import annotations

from shared.core.errors import ServiceError


class TrainingError(ServiceError):
    """A training request the service refuses; the message says what is wrong."""

    status_code = 400


class DataError(TrainingError, ValueError):
    """Bad training data or a bad data reference; the message names the file and line."""

    status_code = 422


class InvalidParams(TrainingError, ValueError):
    """Hyperparameters outside their ranges; the message names each one."""

    status_code = 422


class RunNotFound(TrainingError, LookupError):
    """No such run, or not one of the caller's (404 either way: run ids of other keys do not leak)."""

    status_code = 404


class RunFinished(TrainingError):
    """The run already ended; it cannot be cancelled."""

    status_code = 409


class UploadRejected(TrainingError):
    """An uploaded data file that is empty."""

    status_code = 422


class UploadTooLarge(TrainingError):
    status_code = 413


class BrokerUnavailable(TrainingError):
    """The run could not be queued; it is marked failed."""

    status_code = 503
