"""The size checks of a predict request, made before any work is queued."""

from __future__ import annotations

from collections.abc import Sequence

from shared.core.config import Settings
from shared.predict.errors import TooLarge


def _too_large(what: str, size: int, limit: int, setting: str) -> TooLarge:
    return TooLarge(
        f"{what} is {size:,}; the limit is {limit:,} ({setting}). "
        "Submit larger work as a bulk job (POST /jobs)."
    )


def check_texts(texts: Sequence[str], *, settings: Settings, field: str | None = None) -> None:
    """Refuse (413) a batch with too many texts or a text with too many characters.

    ``field`` names a single text (``text``); without it texts are named ``texts[i]``.
    """
    if field is None and len(texts) > settings.predict_batch_max_texts:
        raise _too_large(
            "the number of texts", len(texts), settings.predict_batch_max_texts, "NER_PREDICT_BATCH_MAX_TEXTS"
        )
    for index, text in enumerate(texts):
        if len(text) > settings.predict_max_chars:
            name = field or f"texts[{index}]"
            raise _too_large(
                f"{name} length in characters", len(text), settings.predict_max_chars, "NER_PREDICT_MAX_CHARS"
            )
