"""HTTP shapes of shadow traffic (``/models/{v}/shadow``), job re-runs and job diffs (issue 15).

These shapes are a contract with the web UI (Models tab, the shadow view, the re-run diff link):
change them only by adding fields.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

# --- shadow traffic ----------------------------------------------------------------------------


class ShadowRequest(BaseModel):
    """``POST /models/{v}/shadow``: start (or change) shadowing; ``sample_rate`` 0 stops it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"sample_rate": 0.1}]})

    sample_rate: float = Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Share of live /predict texts also run through this version, 0 to 1; 0 stops shadowing.",
    )


class SampleEntity(BaseModel):
    """One entity of a disagreement sample; offsets are relative to the sample's ``excerpt``."""

    entity_group: str
    start: int = Field(description="Offset in the excerpt (add excerpt_start for the original text).")
    end: int
    score: float
    word: str | None = Field(description="excerpt[start:end]; null when texts are not stored.")


class DisagreementSample(BaseModel):
    """One live text on which the shadow and the active version answered differently."""

    id: int
    active_version: int
    created_at: datetime
    expires_at: datetime = Field(
        description="When the sample is deleted (the job retention, NER_RETENTION_DAYS)."
    )
    text_chars: int = Field(description="Length of the whole text.")
    excerpt: str | None = Field(
        description="Up to NER_SHADOW_EXCERPT_CHARS characters around the first disagreement; "
        "null when NER_SHADOW_STORE_TEXT=false, and for keys other than admin (live texts of every caller)."
    )
    excerpt_start: int = Field(description="Where the excerpt starts in the whole text.")
    active_entities: list[SampleEntity] = Field(
        description="The active version's entities inside the excerpt."
    )
    shadow_entities: list[SampleEntity] = Field(
        description="The shadow version's entities inside the excerpt."
    )


class ShadowTypeCount(BaseModel):
    """Per entity type: what the shadow version adds and removes relative to the active version."""

    type: str
    added: int = Field(
        description="Shadow entities of this type the active version does not have (exact span)."
    )
    removed: int = Field(description="Active entities of this type the shadow version does not have.")
    matched: int = Field(description="Entities of this type both versions found with the same span.")
    precision: float | None = Field(description="matched / (matched + added); null when 0/0.")
    recall: float | None = Field(description="matched / (matched + removed); null when 0/0.")


class ShadowComparison(BaseModel):
    """The shadow version against one active version (a new activation starts another comparison)."""

    active_version: int
    texts: int = Field(description="Live texts compared.")
    texts_disagreeing: int = Field(description="Texts whose entity sets differ.")
    failed: int = Field(
        description="Sampled texts that could not be compared (a model failed to load or run)."
    )
    active_entities: int
    shadow_entities: int
    matched: int = Field(description="Entities with the same start, end and type in both answers.")
    precision: float | None = Field(description="Of the shadow's entities, the share the active version has.")
    recall: float | None = Field(description="Of the active's entities, the share the shadow version has.")
    f1: float | None
    per_type: list[ShadowTypeCount] = Field(description="By entity type, most changed first.")
    first_at: datetime | None
    last_at: datetime | None


class ShadowView(BaseModel):
    """``GET /models/{v}/shadow``: whether the version is shadowed and what it would change."""

    version: int
    enabled: bool = Field(description="Live traffic is being sampled for this version now.")
    sample_rate: float = Field(description="0 when shadowing is off.")
    started_at: datetime | None = Field(description="When shadowing was last switched on.")
    active_version: int | None = Field(description="The registry's active version now.")
    store_text: bool = Field(description="Whether sample excerpts keep text (NER_SHADOW_STORE_TEXT).")
    comparisons: list[ShadowComparison] = Field(
        description="One per active version compared against; the current active version first."
    )
    samples: list[DisagreementSample] = Field(
        description="The newest disagreements (at most NER_SHADOW_MAX_SAMPLES are kept), newest first."
    )


# --- job re-runs and diffs ---------------------------------------------------------------------


class RerunRequest(BaseModel):
    """``POST /jobs/{id}/rerun``: the same stored documents, another model version."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model_version": 2}]})

    model_version: int = Field(
        ge=1, le=2**31 - 1, description="The registry version to run the documents with."
    )


class RerunAccepted(BaseModel):
    job_id: uuid.UUID = Field(description="The new job.")
    status: str
    status_url: str
    source_job_id: uuid.UUID
    model_version: int
    total: int = Field(description="Documents copied from the source job.")
    diff_url: str = Field(description="GET it to page through the documents whose entities differ.")


class DiffEntity(BaseModel):
    word: str
    entity_group: str
    score: float
    start: int
    end: int


class EntityChange(BaseModel):
    """An entity of job a (``before``) and the one of job b (``after``) at the same or an overlapping span."""

    before: DiffEntity
    after: DiffEntity


class TypeChanges(BaseModel):
    """Changes counted by entity type: added by the new type, the others by job a's type."""

    type: str
    added: int = 0
    removed: int = 0
    retyped: int = 0
    boundary: int = 0


class DiffItem(BaseModel):
    """One document whose entities (or status) differ between job a and job b."""

    seq: int = Field(description="The document's position in the job, from 0.")
    id: str = Field(description="The document's id as submitted.")
    status_a: str
    status_b: str
    added: list[DiffEntity] = Field(description="In b, with no entity of a at an overlapping span.")
    removed: list[DiffEntity] = Field(description="In a, with no entity of b at an overlapping span.")
    retyped: list[EntityChange] = Field(description="Same span, another type.")
    boundary: list[EntityChange] = Field(description="Overlapping spans with other offsets.")
    counts: list[TypeChanges]


class DiffSummary(BaseModel):
    """Over every document both jobs processed (computed on the first page only)."""

    documents_compared: int
    documents_changed: int
    per_type: list[TypeChanges]


class DiffPage(BaseModel):
    job_a: uuid.UUID
    job_b: uuid.UUID
    model_version_a: int | None
    model_version_b: int | None
    complete: bool = Field(description="Both jobs finished: the diff will not change any more.")
    summary: DiffSummary | None = Field(description="On the first page (no cursor); null on later pages.")
    items: list[DiffItem]
    next_cursor: str | None
