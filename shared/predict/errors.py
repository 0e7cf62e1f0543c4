"""Errors of the predict path, each with the HTTP status the gateway answers with."""

from __future__ import annotations

from shared.core.errors import ServiceError

HOW_TO_GET_A_MODEL = (
    "No model to serve: the model registry has no active version and NER_MODEL is not set. "
    "Train one (`ner train`, or POST /train with CoNLL data) and it is activated when it is good "
    "enough, activate an existing version with POST /models/{version}/activate, or set NER_MODEL "
    "to a Hugging Face token-classification model id (e.g. dslim/bert-base-NER) or a local "
    "model folder and restart."
)


class PredictError(ServiceError):
    """A prediction request that cannot be answered; the message says why."""


class TooLarge(PredictError):
    """A text or the batch is over its limit; the message names the limit."""

    status_code = 413


class NoModelAvailable(PredictError, RuntimeError):
    """Neither an active registry version nor NER_MODEL; the message says how to get a model."""

    status_code = 503

    def __init__(self, message: str = HOW_TO_GET_A_MODEL) -> None:
        super().__init__(message)


class ModelNotReady(PredictError, RuntimeError):
    """A model is being loaded (first start); try again in a few seconds."""

    status_code = 503
    headers = {"Retry-After": "5"}  # noqa: RUF012 - a class constant, never mutated


class NotServedHere(PredictError):
    """An ingest gateway (NER_SERVE_PREDICT=false) loads no model."""

    status_code = 503


class InvalidText(PredictError, ValueError):
    """A text that is not valid Unicode text (a lone surrogate, say); the message names it."""

    status_code = 422


class UnknownLabel(PredictError, ValueError):
    """A type in ``labels``, ``exclude_labels`` or ``min_score`` the serving model does not have;
    the message names the field and the allowed values."""

    status_code = 422


class RedactionNotConfigured(PredictError):
    """``hash`` redaction asked for while NER_REDACT_KEY is not set."""

    status_code = 503


class VersionNotLoadable(PredictError):
    """A pinned ``model_version`` exists but its files do not load here; the message says why."""

    status_code = 409
