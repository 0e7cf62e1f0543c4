"""Word-case feature for uncased encoders, fed through BERT's token-type embeddings.

An uncased tokenizer throws capitalisation away, yet case is the strongest single cue for names in
news text. Models trained with this feature keep the plain BERT architecture (only
``type_vocab_size`` grows), so ``AutoModelForTokenClassification`` loads them without custom code;
their ``config.json`` carries ``"ner_case_feature": "token_type"`` and whoever runs them passes
``token_type_ids = case_type_ids(...)`` instead of the tokenizer's all-zero ones.

The class of a token is computed from the characters under the token's offsets; training encodes
the same text a caller would send (``trainer.encoding``), so both compute the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CONFIG_KEY = "ner_case_feature"
CONFIG_VALUE = "token_type"

# Class ids. 0 is what an unaware caller passes (the tokenizer's all-zero token_type_ids), so it is
# "lower case": such a caller gets the behaviour of an uncased model on lower-cased text instead of
# inputs the model never saw. Special tokens and padding (no characters) are 0 as well.
LOWER, NO_LETTERS, TITLE, UPPER, MIXED = range(5)
NUM_CASE_TYPES = 5


def case_class(chars: str) -> int:
    """The case class of a token's original characters."""
    letters = [c for c in chars if c.isalpha()]
    if not letters:
        return NO_LETTERS
    # Letters without case (CJK, Arabic) count as lower: they carry no capitalisation cue.
    upper = [c.isupper() for c in letters]
    if not any(upper):
        return LOWER
    if all(upper):
        return UPPER if len(letters) > 1 else TITLE
    if upper[0] and not any(upper[1:]):
        return TITLE
    return MIXED


def case_type_ids(text: str, offsets: Sequence[Sequence[int]]) -> list[int]:
    """Token-type ids for one encoded text: the case class of ``text[start:end]`` for each token."""
    return [case_class(text[start:end]) if end > start else LOWER for start, end in offsets]


def uses_case_feature(config: Any) -> bool:
    """Whether a model config asks for case token-type ids."""
    return getattr(config, CONFIG_KEY, None) == CONFIG_VALUE
