"""Redaction: a text with its entities replaced, by a fixed character, the type, or a keyed hash.

``hash`` uses HMAC-SHA256 keyed with NER_REDACT_KEY over the entity's own characters, so one name
gives one token across requests and the jobs of one deployment (pseudonymisation: records can still
be joined), while nobody without the key can confirm a guessed name from its token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from typing import Literal

from shared.predict.options import OutputOptions, apply_options, keep
from shared.predict.schemas import Entity

RedactMode = Literal["mask", "type", "hash"]

# 16 hex digits (64 bits) of the HMAC: no two names of a job collide in practice, and short enough
# that the redacted text stays readable.
HASH_CHARS = 16


def hash_token(word: str, *, key: bytes) -> str:
    """The ``hash`` mode's replacement for one entity text: the same word and key, the same token."""
    digest = hmac.new(key, word.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"[{digest[:HASH_CHARS]}]"


def replacement(entity: Entity, *, mode: RedactMode, key: bytes, mask_char: str = "*") -> str:
    """What one entity's characters become in the redacted text."""
    if mode == "mask":
        return mask_char * (entity.end - entity.start)
    if mode == "type":
        return f"[{entity.entity_group}]"
    if mode == "hash":
        if not key:
            raise ValueError("hash redaction needs a non-empty key")
        return hash_token(entity.word, key=key)
    raise ValueError(f"unknown redaction mode {mode!r}; allowed values: mask, type, hash")


def select(entities: Sequence[Entity], types: Collection[str] | None = None) -> list[Entity]:
    """The entities that redaction replaces: of ``types`` (all when None), in text order, and of
    overlapping ones (the engine makes none) the first, so no replacement cuts into another."""
    chosen: list[Entity] = []
    end = 0
    for entity in sorted(entities, key=lambda e: (e.start, -e.end)):
        if types is not None and entity.entity_group not in types:
            continue
        if entity.start < end or entity.end <= entity.start:
            continue
        chosen.append(entity)
        end = entity.end
    return chosen


def redact(
    text: str,
    entities: Sequence[Entity],
    *,
    mode: RedactMode,
    key: bytes,
    types: Collection[str] | None = None,
    mask_char: str = "*",
) -> str:
    """``text`` with each entity of ``types`` (all when None) replaced; entities at codepoint offsets."""
    if len(mask_char) != 1:
        raise ValueError("mask_char must be exactly one character")
    parts: list[str] = []
    done = 0
    for entity in select(entities, types):
        if entity.end > len(text):
            raise ValueError(
                f"entity {entity.start}:{entity.end} is outside a text of {len(text)} characters"
            )
        parts.append(text[done : entity.start])
        parts.append(replacement(entity, mode=mode, key=key, mask_char=mask_char))
        done = entity.end
    parts.append(text[done:])
    return "".join(parts)


def redact_entities(
    text: str,
    entities: Sequence[Entity],
    options: OutputOptions,
    *,
    mode: RedactMode,
    key: bytes,
    types: Collection[str] | None = None,
    mask_char: str = "*",
) -> tuple[str, list[Entity]]:
    """The redacted text and the entities replaced (offsets into the ORIGINAL ``text``, in the
    unit ``options`` asks): entities pass ``options``' filters, then those of ``types`` are replaced."""
    chosen = select([entity for entity in entities if keep(entity, options)], types)
    redacted = redact(text, chosen, mode=mode, key=key, mask_char=mask_char)
    return redacted, apply_options(text, chosen, options)
