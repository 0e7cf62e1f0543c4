"""The Hugging Face Inference API shape of token classification.

``huggingface_hub.InferenceClient(...).token_classification(text, aggregation_strategy=...,
ignore_labels=..., stride=...)`` posts ``{"inputs": text, "parameters": {...}}`` (parameters left
unset are not sent) and parses a list of ``{entity_group, score, word, start, end}``: exactly this
service's :class:`~shared.predict.schemas.Entity`. Spans stay word-level whatever
``aggregation_strategy`` asks (the engine always groups words); ``ignore_labels`` drops those entity
types; ``stride`` is accepted and not used (the engine has its own windows, NER_WINDOW_STRIDE_TOKENS).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.predict.schemas import Entity

_EXAMPLE = "Google was founded by Larry Page and Sergey Brin in California."


class TokenClassificationParameters(BaseModel):
    """The parameters the client sends; an unknown one is refused by name (422)."""

    model_config = ConfigDict(extra="forbid")

    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] | None = Field(
        default=None, description="Accepted for compatibility: entities are always whole words, grouped."
    )
    ignore_labels: list[str] | None = Field(
        default=None, description="Entity types left out of the answer (e.g. ['MISC'])."
    )
    stride: int | None = Field(
        default=None, ge=0, description="Accepted for compatibility; the engine's own windows are used."
    )


class TokenClassificationRequest(BaseModel):
    """One text (what the client sends) or a list of texts (one list of entities per text)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"inputs": _EXAMPLE, "parameters": {"aggregation_strategy": "simple"}}]
        },
    )

    inputs: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] = Field(
        description="The text, or a non-empty list of texts."
    )
    parameters: TokenClassificationParameters = Field(default_factory=TokenClassificationParameters)

    @field_validator("inputs")
    @classmethod
    def _not_an_empty_list(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("inputs: give a text or a non-empty list of texts")
        return value

    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


def answer(
    request: TokenClassificationRequest, results: list[list[Entity]]
) -> list[Entity] | list[list[Entity]]:
    """The response body: the entities of the one text, or one list per text, without ignored types."""
    ignored = set(request.parameters.ignore_labels or ())
    kept = [[entity for entity in entities if entity.entity_group not in ignored] for entities in results]
    return kept[0] if isinstance(request.inputs, str) else kept
