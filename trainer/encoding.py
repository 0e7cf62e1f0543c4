"""Words and tags to model inputs: sub-token ids, first-sub-token labels, case token-type ids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from shared.predict import casing
from trainer.losses import IGNORE_INDEX


def align_labels(word_ids: list[int | None], tags: list[str], label2id: Mapping[str, int]) -> list[int]:
    """A word's label on its first sub-token only (as the engine reads it); the rest are ignored."""
    labels = []
    previous = None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else label2id[tags[word]])
        previous = word
    return labels


def encode_split(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    label2id: Mapping[str, int],
    *,
    max_length: int,
    case_feature: bool,
) -> datasets.Dataset:
    """Tokenize a split with ``datasets.map`` (batched, cached next to the split's Arrow files)."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        encoded = tokenizer(
            batch["tokens"],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            return_offsets_mapping=case_feature,
        )
        labels, type_ids = [], []
        for i, (words, tags) in enumerate(zip(batch["tokens"], batch["tags"], strict=True)):
            word_ids = encoded.word_ids(i)
            labels.append(align_labels(word_ids, tags, label2id))
            if case_feature:
                offsets = encoded["offset_mapping"][i]
                type_ids.append(casing.words_case_type_ids(words, word_ids, offsets))
        out = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": labels,
            "length": [len(ids) for ids in encoded["input_ids"]],
        }
        if case_feature:
            out["token_type_ids"] = type_ids
        return out

    return dataset.map(
        encode,
        batched=True,
        remove_columns=dataset.column_names,
        desc="Tokenizing",
    )
