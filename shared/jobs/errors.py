"""Errors of the jobs service, each with the HTTP status the gateway answers with."""

from __future__ import annotations

from shared.core.errors import ServiceError


class JobError(ServiceError):
    """A request the jobs service refuses; the message says what is wrong."""

    status_code = 400


class InvalidRequest(JobError):
    """A malformed parameter (e.g. a cursor this API never returned)."""

    status_code = 422


class InvalidSubmission(InvalidRequest):
    """Malformed input (a line, a column, an encoding, an empty job): nothing is stored."""


class SubmissionTooLarge(JobError):
    """A document, the document count or the total characters exceed a configured limit."""

    status_code = 413


class UnsupportedMediaType(JobError):
    """A submission that is neither JSON nor a multipart file upload."""

    status_code = 415


class JobNotFound(JobError):
    status_code = 404


class JobConflict(JobError):
    """The job is in a state that does not allow the request (e.g. cancelling a finished job)."""

    status_code = 409


class NoModelForJobs(JobError):
    """Neither an active registry version nor NER_MODEL: there is nothing to pin a job to."""

    status_code = 503
