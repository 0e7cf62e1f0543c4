"""The size checks of a predict request, made before any work is queued."""

from __future__ import annotations

import re
from collections.abc import Sequence

from shared.core.config import Settings
from shared.predict.errors import InvalidText, TooLarge

# JSON lets a caller send "\ud800": a lone surrogate, which no UTF-8 encoder (tokenizer, database,
# response) accepts. Refused here, by name, instead of failing deep in the engine.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _too_large(what: str, size: int, limit: int, setting: str) -> TooLarge:
    return TooLarge(
        f"{what} is {size:,}; the limit is {limit:,} ({setting}). "
        "Submit larger work as a bulk job (POST /jobs)."
    )


def check_texts(texts: Sequence[str], *, settings: Settings, field: str | None = None) -> int:
    """Refuse a batch with too many texts or characters (413) or a text that is not Unicode (422).

    ``field`` names a single text (``text``); without it texts are named ``texts[i]``. Returns
    the number of characters, which the rate limit charges.
    """
    if field is None and len(texts) > settings.predict_batch_max_texts:
        raise _too_large(
            "the number of texts", len(texts), settings.predict_batch_max_texts, "NER_PREDICT_BATCH_MAX_TEXTS"
        )
    total = 0
    for index, text in enumerate(texts):
        name = field or f"texts[{index}]"
        if len(text) > settings.predict_max_chars:
            raise _too_large(
                f"{name} length in characters", len(text), settings.predict_max_chars, "NER_PREDICT_MAX_CHARS"
            )
        if _SURROGATE.search(text):
            raise InvalidText(f"{name}: contains a lone surrogate (\\ud800-\\udfff), which is not text")
        total += len(text)
    if field is None and total > settings.predict_batch_max_chars:
        raise _too_large(
            "the batch's total length in characters",
            total,
            settings.predict_batch_max_chars,
            "NER_PREDICT_BATCH_MAX_CHARS",
        )
    return total
