"""Request and response bodies of the public API (pydantic), with the examples shown at /docs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.predict.options import OutputOptions

_GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."
_GOOGLE_ENTITIES = [
    {"word": "Google", "entity_group": "ORG", "score": 0.998, "start": 0, "end": 6},
    {"word": "Larry Page", "entity_group": "PER", "score": 0.999, "start": 22, "end": 32},
    {"word": "Sergey Brin", "entity_group": "PER", "score": 0.999, "start": 37, "end": 48},
    {"word": "California", "entity_group": "LOC", "score": 0.999, "start": 52, "end": 62},
]


# --- predict ---------------------------------------------------------------------------------

ModelVersionField = Field(
    default=None,
    ge=1,
    strict=True,  # a version number: not true, 1.5 or "latest"
    description=(
        "Answer with this registry version (404 when it does not exist); the active version when "
        "omitted. A version not yet loaded is loaded on demand (the first request waits for it; "
        "requests to other versions do not)."
    ),
)


class PredictRequest(OutputOptions):
    """One text. Longer than NER_PREDICT_MAX_CHARS: 413 (use a bulk job instead)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"text": _GOOGLE},
                {"text": _GOOGLE, "labels": ["PER"], "min_score": 0.6, "offset_encoding": "utf16"},
            ]
        }
    )

    text: str = Field(
        min_length=1, description="The text to analyse; any Unicode, any length up to the limit."
    )
    model_version: int | None = ModelVersionField


class BatchPredictRequest(OutputOptions):
    """Several texts answered together, one result per text in order."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": [_GOOGLE, "Kofi Annan visited Nairobi on Monday."]}]}
    )

    texts: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        description="Up to NER_PREDICT_BATCH_MAX_TEXTS non-empty texts, each within NER_PREDICT_MAX_CHARS.",
    )
    model_version: int | None = ModelVersionField


class Entity(BaseModel):
    """One entity: ``word`` is exactly ``text[start:end]`` of the caller's text.

    The one definition of an entity: the engine returns these, /predict/ answers them and bulk
    jobs store them.
    """

    model_config = ConfigDict(frozen=True)

    word: str = Field(description="The caller's own characters, text[start:end].")
    entity_group: str = Field(description="Entity type, e.g. PER, ORG, LOC, MISC.")
    score: float = Field(description="Mean probability of the entity's words (first sub-token of each).")
    start: int = Field(
        description="Offset of the first character: a Python string index (codepoints), or in the "
        "unit the request's `offset_encoding` asks (UTF-16 code units, UTF-8 bytes)."
    )
    end: int = Field(description="Offset one past the last character, in the same unit as `start`.")


ENTITY_FIELDS = tuple(Entity.model_fields)


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"entities": _GOOGLE_ENTITIES, "model_version": 3}]}
    )

    entities: list[Entity]
    model_version: int | None = Field(
        description="The registry version that answered; null while serving NER_MODEL."
    )


class TextEntities(BaseModel):
    entities: list[Entity]


class BatchPredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {"entities": _GOOGLE_ENTITIES},
                        {
                            "entities": [
                                {
                                    "word": "Kofi Annan",
                                    "entity_group": "PER",
                                    "score": 0.999,
                                    "start": 0,
                                    "end": 10,
                                },
                                {
                                    "word": "Nairobi",
                                    "entity_group": "LOC",
                                    "score": 0.998,
                                    "start": 19,
                                    "end": 26,
                                },
                            ]
                        },
                    ],
                    "model_version": 3,
                }
            ]
        }
    )

    results: list[TextEntities] = Field(description="One result per text, in the order given.")
    model_version: int | None = Field(
        description="The registry version that answered; null while serving NER_MODEL."
    )


# --- redact ----------------------------------------------------------------------------------


class RedactRequest(OutputOptions):
    """One text to redact; ``labels``/``exclude_labels``/``min_score`` choose the entities first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": _GOOGLE, "mode": "type"}]})

    text: str = Field(min_length=1, description="The text to redact; the same limits as /predict/.")
    mode: Literal["mask", "type", "hash"] = Field(
        default="mask",
        description=(
            "`mask`: each character of an entity becomes `mask_char` (same length); `type`: the "
            "entity becomes its type, `[PER]`; `hash`: a keyed HMAC of the entity's text, "
            "`[3f9a...]`, the same token for the same name (needs NER_REDACT_KEY)."
        ),
    )
    types: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Only entities of these types are redacted (all found ones when omitted).",
    )
    mask_char: str = Field(default="*", min_length=1, max_length=1, description="The `mask` character.")
    model_version: int | None = ModelVersionField

    @field_validator("mask_char")
    @classmethod
    def _a_character(cls, value: str) -> str:
        # JSON can carry a lone surrogate ("\ud800"), which no response could encode.
        if "\ud800" <= value <= "\udfff" or not value.isprintable():
            raise ValueError("mask_char must be one printable character")
        return value


class RedactResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "text": "[ORG] was founded by [PER] and [PER] in [LOC].",
                    "entities": _GOOGLE_ENTITIES,
                    "model_version": 3,
                }
            ]
        }
    )

    text: str = Field(description="The caller's text with each redacted entity replaced.")
    entities: list[Entity] = Field(
        description="The entities replaced, with offsets into the ORIGINAL text (in `offset_encoding`)."
    )
    model_version: int | None = Field(
        description="The registry version that answered; null while serving NER_MODEL."
    )
