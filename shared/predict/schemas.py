"""Request and response bodies of the public API (pydantic), with the examples shown at /docs."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

_GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."
_GOOGLE_ENTITIES = [
    {"word": "Google", "entity_group": "ORG", "score": 0.998, "start": 0, "end": 6},
    {"word": "Larry Page", "entity_group": "PER", "score": 0.999, "start": 22, "end": 32},
    {"word": "Sergey Brin", "entity_group": "PER", "score": 0.999, "start": 37, "end": 48},
    {"word": "California", "entity_group": "LOC", "score": 0.999, "start": 52, "end": 62},
]


# --- predict ---------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """One text. Longer than NER_PREDICT_MAX_CHARS: 413 (use a bulk job instead)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": _GOOGLE}]})

    text: str = Field(
        min_length=1, description="The text to analyse; any Unicode, any length up to the limit."
    )


class BatchPredictRequest(BaseModel):
    """Several texts answered together, one result per text in order."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"texts": [_GOOGLE, "Kofi Annan visited Nairobi on Monday."]}]}
    )

    texts: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        description="Up to NER_PREDICT_BATCH_MAX_TEXTS non-empty texts, each within NER_PREDICT_MAX_CHARS.",
    )


class Entity(BaseModel):
    """One entity: ``word`` is exactly ``text[start:end]`` of the caller's text.

    The one definition of an entity: the engine returns these, /predict/ answers them and bulk
    jobs store them.
    """

    model_config = ConfigDict(frozen=True)

    word: str = Field(description="The caller's own characters, text[start:end].")
    entity_group: str = Field(description="Entity type, e.g. PER, ORG, LOC, MISC.")
    score: float = Field(description="Mean probability of the entity's words (first sub-token of each).")
    start: int = Field(description="Character offset of the first character (Python string index).")
    end: int = Field(description="Character offset one past the last character.")


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
