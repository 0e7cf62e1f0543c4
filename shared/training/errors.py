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


class UploadQuotaExceeded(TrainingError):
    """The key's stored uploads would exceed NER_TRAIN_UPLOAD_QUOTA_BYTES."""

    status_code = 429
    headers = {"Retry-After": "3600"}  # noqa: RUF012 - a class constant, never mutated


class RunQuotaExceeded(TrainingError):
    """The key already has NER_TRAIN_MAX_QUEUED_RUNS runs queued or running."""

    status_code = 429
    headers = {"Retry-After": "60"}  # noqa: RUF012 - a class constant, never mutated


class BaseModelNotAllowed(TrainingError):
    """A base model other than NER_BASE_MODEL, named by a key that is not admin and not allow-listed."""

    status_code = 403
