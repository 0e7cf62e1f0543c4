"""What a caller may choose about the entities it gets back: offset units, which types, how sure.

Pure functions over decoded entities, shared by ``/predict/``, ``/redact`` and bulk jobs: the
model always decodes every type at codepoint offsets, and ``apply_options`` filters that list
(so a dropped entity never splits or shortens another) and only then converts the offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Literal, get_args

from pydantic import BaseModel, Field, field_validator, model_validator

from shared.predict.errors import UnknownLabel

if TYPE_CHECKING:  # schemas builds its requests on OutputOptions
    from shared.predict.schemas import Entity

OffsetEncoding = Literal["codepoint", "utf16", "utf8"]
OFFSET_ENCODINGS: tuple[str, ...] = get_args(OffsetEncoding)

# The key of a per-type ``min_score`` object that applies to every type not named in it.
ANY_TYPE = "*"

Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
SCORE_RANGE = "a number from 0 to 1"
TypeName = Annotated[str, Field(min_length=1, max_length=100)]


class OutputOptions(BaseModel):
    """Per-request choices about the entities answered; every field's default is today's behaviour."""

    offset_encoding: OffsetEncoding = Field(
        default="codepoint",
        description=(
            "Unit of `start`/`end`: `codepoint` (Python string index, the default), `utf16` "
            "(JavaScript, Java, C# string index) or `utf8` (byte offset in the UTF-8 encoding). "
            "`word` is always the caller's own characters."
        ),
    )
    labels: list[TypeName] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description='Only entities of these types (e.g. ["PER", "ORG"]); the serving model\'s types.',
    )
    exclude_labels: list[TypeName] | None = Field(
        default=None,
        max_length=100,
        description="Entities of every type except these; not together with `labels`.",
    )
    min_score: Score | dict[TypeName, Score] | None = Field(
        default=None,
        description=(
            "Drop entities scored below this, in [0, 1]: one number for every type, or per type "
            '(`{"PER": 0.6, "*": 0.3}`; `"*"` applies to the types not named, which are kept '
            "whatever their score without it)."
        ),
    )

    @field_validator("min_score", mode="before")
    @classmethod
    def _score_shape(cls, value: object) -> object:
        # One clear message instead of a union's two (and no ``true`` read as 1.0).
        if value is None:
            return value
        if isinstance(value, dict):
            for name, score in value.items():
                if not _is_score(score):
                    raise ValueError(f"min_score[{str(name)[:50]!r}] must be {SCORE_RANGE}")
            return value
        if not _is_score(value):
            raise ValueError(f"min_score must be {SCORE_RANGE}, or an object of type -> {SCORE_RANGE}")
        return value

    @model_validator(mode="after")
    def _one_of_labels(self) -> OutputOptions:
        if self.labels is not None and self.exclude_labels is not None:
            raise ValueError("give `labels` (only these types) or `exclude_labels`, not both")
        if isinstance(self.min_score, dict) and len(self.min_score) > 100:
            raise ValueError("min_score: at most 100 types")
        return self

    @property
    def is_default(self) -> bool:
        """True when the options change nothing (codepoint offsets, every type, every score)."""
        return (
            self.offset_encoding == "codepoint"
            and self.labels is None
            and not self.exclude_labels
            and self.min_score is None
        )


def _is_score(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0.0 <= value <= 1.0  # NaN fails too
    )


def entity_types(model_labels: Iterable[str]) -> list[str]:
    """The entity types of a model's tag set (``B-PER``, ``I-PER``, ``O`` -> ``PER``), sorted."""
    types = set()
    for label in model_labels:
        kind = label[2:] if label.startswith(("B-", "I-", "E-", "S-", "L-", "U-")) else label
        if label != "O" and kind != "O":
            types.add(kind)
    return sorted(types)


def check_labels(options: OutputOptions, *, known: Iterable[str]) -> None:
    """Refuse (422) a type in ``labels``, ``exclude_labels`` or ``min_score`` the model does not have."""
    allowed = sorted(set(known))
    check_types("labels", options.labels or (), allowed=allowed)
    check_types("exclude_labels", options.exclude_labels or (), allowed=allowed)
    if isinstance(options.min_score, dict):
        names = [name for name in options.min_score if name != ANY_TYPE]
        check_types("min_score", names, allowed=allowed, extra=f" (and {ANY_TYPE!r} for every other type)")


def check_types(field: str, names: Iterable[str], *, allowed: Sequence[str], extra: str = "") -> None:
    """Refuse (422, naming ``field`` and the allowed values) any of ``names`` not in ``allowed``."""
    unknown = [name for name in names if name not in allowed]
    if unknown:
        shown = ", ".join(repr(name[:50]) for name in unknown[:5])
        raise UnknownLabel(
            f"{field}: unknown entity type {shown} for the model answering; "
            f"allowed values: {', '.join(allowed) or '(none)'}{extra}"
        )


def keep(entity: Entity, options: OutputOptions) -> bool:
    """Whether ``entity`` passes the type and score filters of ``options``."""
    kind = entity.entity_group
    if options.labels is not None and kind not in options.labels:
        return False
    if options.exclude_labels and kind in options.exclude_labels:
        return False
    threshold = options.min_score
    if isinstance(threshold, dict):
        threshold = threshold.get(kind, threshold.get(ANY_TYPE))
    return threshold is None or entity.score >= threshold


def apply_options(text: str, entities: Sequence[Entity], options: OutputOptions) -> list[Entity]:
    """Filter decoded entities (codepoint offsets into ``text``), then convert their offsets."""
    kept = [entity for entity in entities if keep(entity, options)]
    if options.offset_encoding == "codepoint":
        return kept
    convert = offset_converter(text, [o for e in kept for o in (e.start, e.end)], options.offset_encoding)
    return [
        entity.model_copy(update={"start": convert[entity.start], "end": convert[entity.end]})
        for entity in kept
    ]


def offset_converter(text: str, positions: Iterable[int], encoding: OffsetEncoding) -> dict[int, int]:
    """Codepoint positions of ``text`` -> the same positions in ``encoding`` units, in one pass."""
    result: dict[int, int] = {}
    done = units = 0
    for position in sorted(set(positions)):
        units += _units(text[done:position], encoding)
        done = position
        result[position] = units
    return result


def _units(part: str, encoding: OffsetEncoding) -> int:
    if encoding == "utf8":
        # surrogatepass: a lone surrogate is refused before decoding, but a length is no place to fail
        return len(part.encode("utf-8", "surrogatepass"))
    if encoding == "utf16":
        # Characters beyond the Basic Multilingual Plane take two UTF-16 code units (a surrogate pair).
        return len(part) + sum(1 for char in part if ord(char) > 0xFFFF)
    return len(part)
