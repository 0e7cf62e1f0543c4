"""A bulk job's options: the output choices of ``/predict/`` and redaction, applied to its stored results.

Validated once at submission (422 naming the field and the allowed values; nothing stored), kept
on the job row as JSON, and applied by the chunk body to each document after decoding: filter
(types, scores) at codepoint offsets, redact the text with what remains, then convert the offsets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.core.config import Settings
from shared.jobs.errors import InvalidSubmission
from shared.predict.options import OFFSET_ENCODINGS, OutputOptions, apply_options, check_labels
from shared.predict.redact import RedactMode, redact
from shared.predict.schemas import Entity

REDACT_MODES: tuple[str, ...] = get_args(RedactMode)
# The fields a submission may carry besides its documents (JSON body keys, form fields).
OUTPUT_FIELDS = ("offset_encoding", "labels", "exclude_labels", "min_score")
OPTION_FIELDS = (*OUTPUT_FIELDS, "redact")


class RedactOption(BaseModel):
    """The ``redact`` job option: results carry the document's text with these entities replaced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["mask", "type", "hash"] = Field(
        description="mask: a fixed character, same length; type: [PER]; hash: a keyed HMAC token per name"
    )
    types: list[str] | None = Field(
        default=None, min_length=1, max_length=100, description="Types to redact; default: every type kept"
    )


@dataclass(frozen=True)
class JobOptions:
    """What a job does to its results besides running the model; the default changes nothing."""

    output: OutputOptions | None = None
    redact: RedactOption | None = None

    @property
    def is_default(self) -> bool:
        return self.redact is None and (self.output is None or self.output.is_default)

    def stored(self) -> dict[str, Any] | None:
        """The JSON kept on the job row (None for the default)."""
        if self.is_default:
            return None
        stored: dict[str, Any] = {}
        if self.output is not None and not self.output.is_default:
            stored.update(self.output.model_dump(exclude_defaults=True))
        if self.redact is not None:
            stored["redact"] = self.redact.model_dump(exclude_none=True)
        return stored

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any] | None) -> JobOptions:
        """The options of a job row (validated when it was submitted)."""
        if not stored:
            return cls()
        output = {key: stored[key] for key in OUTPUT_FIELDS if key in stored}
        redact_value = stored.get("redact")
        return cls(
            output=OutputOptions(**output) if output else None,
            redact=RedactOption(**redact_value) if redact_value else None,
        )


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """Pydantic's errors as ``field: message``, the field named as the caller wrote it."""
    parts = []
    for error in exc.errors():
        where = prefix + ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where.rstrip('.') or 'options'}: {message}")
    return "; ".join(parts)


def _form_list(field: str, value: str) -> Any:
    """A form field holding a list: a JSON array, or names separated by commas."""
    value = value.strip()
    if value.startswith("["):
        return _form_json(field, value)
    return [part.strip() for part in value.split(",") if part.strip()]


def _form_json(field: str, value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidSubmission(f"{field}: not valid JSON") from None


def form_values(form: Mapping[str, Any]) -> dict[str, Any]:
    """The option fields of a multipart form, as the JSON body would carry them.

    ``labels`` / ``exclude_labels``: ``PER,ORG`` or a JSON array; ``min_score``: ``0.5`` or a JSON
    object; ``redact``: a mode (``mask``) or a JSON object ``{"mode": ..., "types": [...]}``.
    """
    values: dict[str, Any] = {}
    for field in (*OPTION_FIELDS, "callback_url", "name"):
        raw = form.get(field)
        if raw is None or raw == "":
            continue
        if not isinstance(raw, str):
            raise InvalidSubmission(f"{field}: must be a text field, not a file")
        if field in ("labels", "exclude_labels"):
            values[field] = _form_list(field, raw)
        elif field == "min_score":
            values[field] = _form_json(field, raw.strip())
        elif field == "redact":
            values[field] = _form_json(field, raw) if raw.strip().startswith("{") else raw.strip()
        else:
            values[field] = raw.strip()
    return values


def parse_options(
    values: Mapping[str, Any], *, settings: Settings, known_types: Sequence[str] | None = None
) -> JobOptions:
    """The job options among ``values`` (a JSON body or ``form_values``), checked; 422 naming the field.

    ``known_types``: the pinned model's entity types when the registry knows them; a type outside
    them in ``labels``, ``exclude_labels``, ``min_score`` or ``redact.types`` is refused.
    """
    output_values = {key: values[key] for key in OUTPUT_FIELDS if values.get(key) is not None}
    if "offset_encoding" in output_values and output_values["offset_encoding"] not in OFFSET_ENCODINGS:
        raise InvalidSubmission(
            f"offset_encoding: unknown unit {str(output_values['offset_encoding'])[:50]!r}; "
            f"allowed values: {', '.join(OFFSET_ENCODINGS)}"
        )
    output = None
    if output_values:
        try:
            output = OutputOptions(**output_values)
        except ValidationError as exc:
            raise InvalidSubmission(_describe(exc)) from None
        if known_types is not None:
            check_labels(output, known=known_types)
    redact_option = _parse_redact(values.get("redact"), settings=settings, known_types=known_types)
    return JobOptions(output=output, redact=redact_option)


def _parse_redact(
    value: Any, *, settings: Settings, known_types: Sequence[str] | None
) -> RedactOption | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, dict):
        raise InvalidSubmission(
            f'redact: expected an object like {{"mode": "mask"}}; modes: {", ".join(REDACT_MODES)}'
        )
    if value.get("mode") not in REDACT_MODES:
        shown = str(value.get("mode"))[:50]
        raise InvalidSubmission(
            f"redact.mode: unknown mode {shown!r}; allowed values: {', '.join(REDACT_MODES)}"
        )
    try:
        option = RedactOption(**value)
    except ValidationError as exc:
        raise InvalidSubmission(_describe(exc, "redact.")) from None
    if option.mode == "hash" and settings.redact_key is None:
        # 422, not /redact's 503: the submission is refused whole and says what this service allows.
        raise InvalidSubmission(
            "redact.mode: hash is not available here (the operator has not set NER_REDACT_KEY); "
            "allowed values: mask, type"
        )
    if option.types is not None and known_types is not None:
        unknown = [name for name in option.types if name not in known_types]
        if unknown:
            shown = ", ".join(repr(name[:50]) for name in unknown[:5])
            allowed = ", ".join(known_types) or "(none)"
            raise InvalidSubmission(f"redact.types: unknown entity type {shown}; allowed values: {allowed}")
    return option


def redact_key(settings: Settings) -> bytes:
    """NER_REDACT_KEY as bytes (empty when unset; ``hash`` jobs are refused then)."""
    key = settings.redact_key
    if key is None:
        return b""
    return key.get_secret_value().encode()


def shape(
    text: str, entities: Sequence[dict[str, Any]], options: JobOptions, *, key: bytes
) -> tuple[list[dict[str, Any]], str | None]:
    """A document's stored entities and redacted text under ``options`` (entities at codepoint offsets).

    Filtering happens first, so redaction replaces only what is returned, at the original offsets;
    the offsets are converted last.
    """
    if options.is_default:
        return list(entities), None
    decoded = [Entity(**entity) for entity in entities]
    output = options.output or OutputOptions()
    kept = apply_options(text, decoded, output.model_copy(update={"offset_encoding": "codepoint"}))
    redacted = None
    if options.redact is not None:
        redacted = redact(text, kept, mode=options.redact.mode, key=key, types=options.redact.types)
    if output.offset_encoding != "codepoint":
        kept = apply_options(text, kept, OutputOptions(offset_encoding=output.offset_encoding))
    return [entity.model_dump() for entity in kept], redacted
