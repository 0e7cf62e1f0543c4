"""Annotated sentences to model inputs, read the way the engine reads a caller's text.

Every sentence becomes the text a user would send (its tokens joined by single spaces) split into
the engine's words (``shared.predict.engine.words``): each word gets a tag derived from the token it
came from, and the label goes on the word's first sub-token as :func:`words.first_tokens` finds it
from character offsets, the same call the engine decodes with. With ``context_tokens`` the
labelled sentences are read between their neighbours of the same document (FLERT-style context,
labels ignored there), as the engine reads a whole article; a share of the training sentences is
read alone as well, as a caller sending one sentence has it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from shared.predict import casing
from shared.predict.engine import words
from shared.predict.engine.engine import tokenize_with_offsets
from trainer.losses import IGNORE_INDEX

# Bump when what an example holds changes, so cached encodings of older code are not reused.
ENCODING_VERSION = "3"
# Between sentences of one document, as a caller's article has them.
SENTENCE_SEPARATOR = "\n"


@dataclass(frozen=True)
class SentenceWords:
    """One annotated sentence as text: the engine's words in it and a tag per word."""

    text: str
    spans: list[tuple[int, int]]
    tags: list[str]


def sentence_words(tokens: Sequence[str], tags: Sequence[str]) -> SentenceWords:
    """Tokens joined by single spaces; each token's words tagged from it (B-X, then I-X; O stays O)."""
    spans: list[tuple[int, int]] = []
    word_tags: list[str] = []
    position = 0
    for token, tag in zip(tokens, tags, strict=True):
        for start, end, piece_tag in words.piece_tags(token, tag):
            spans.append((position + start, position + end))
            word_tags.append(piece_tag)
        position += len(token) + 1
    return SentenceWords(" ".join(tokens), spans, word_tags)


@dataclass(frozen=True)
class EncodingConfig:
    max_length: int
    case_feature: bool
    context_tokens: int = 0
    no_context_fraction: float = 0.0
    seed: int = 42


@dataclass(frozen=True)
class _Plan:
    """One example: sentences ``[first, last)`` of a document, labels on ``[target_first, target_last)``."""

    first: int
    target_first: int
    target_last: int
    last: int


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after one sequence ([CLS] ... [SEP], <s> ... </s>)."""
    probe = tokenizer("a", return_special_tokens_mask=True)
    ids, mask = probe["input_ids"], probe["special_tokens_mask"]
    content = [i for i, special in enumerate(mask) if not special]
    return ids[: content[0]], ids[content[-1] + 1 :]


def _plan(lengths: Sequence[int], alone: Sequence[bool], budget: int, context: int) -> list[_Plan]:
    """Examples of one document: runs of sentences filling ``budget`` minus the context, and the singles."""
    if context == 0:
        return [_Plan(i, i, i + 1, i + 1) for i in range(len(lengths))]
    target_budget = budget - 2 * context
    plans: list[_Plan] = []
    index = 0
    while index < len(lengths):
        if alone[index]:
            plans.append(_Plan(index, index, index + 1, index + 1))
            index += 1
            continue
        end, used = index + 1, lengths[index]
        while end < len(lengths) and not alone[end] and used + lengths[end] <= target_budget:
            used += lengths[end]
            end += 1
        first, seen = index, 0
        while first > 0 and seen < context:
            first -= 1
            seen += lengths[first]
        last, seen = end, 0
        while last < len(lengths) and seen < context:
            seen += lengths[last]
            last += 1
        plans.append(_Plan(first, index, end, last))
        index = end
    return plans


class _Encoder:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, label2id: Mapping[str, int], config: EncodingConfig
    ) -> None:
        self.tokenizer = tokenizer
        self.label2id = label2id
        self.config = config
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.budget = config.max_length - len(self.prefix) - len(self.suffix)
        # Context never crowds out the labelled sentences: with a short max_length (64), at most a
        # quarter of the window on each side; with the default 256 the full 64.
        self.context = config.context_tokens
        if 2 * self.context > 0.6 * self.budget:
            self.context = self.budget // 4

    def _tokenize(self, texts: list[str]) -> Any:
        return tokenize_with_offsets(self.tokenizer, texts)

    def document(self, sentences: list[SentenceWords], rng: random.Random | None) -> Iterator[dict[str, Any]]:
        """The examples of one document (sentences in order)."""
        context = self.context
        if context:
            lengths = [len(ids) for ids in self._tokenize([s.text for s in sentences])["input_ids"]]
        else:
            lengths = [0] * len(sentences)
        alone = [rng is not None and rng.random() < self.config.no_context_fraction for _ in sentences]
        plans = _plan(lengths, alone, self.budget, context)
        texts = [SENTENCE_SEPARATOR.join(s.text for s in sentences[p.first : p.last]) for p in plans]
        batch = self._tokenize(texts)
        for row, (plan, text) in enumerate(zip(plans, texts, strict=True)):
            yield self._example(sentences, plan, text, batch["input_ids"][row], batch["offset_mapping"][row])

    def _example(
        self,
        sentences: list[SentenceWords],
        plan: _Plan,
        text: str,
        ids: list[int],
        offsets: list[tuple[int, int]],
    ) -> dict[str, Any]:
        spans: list[tuple[int, int]] = []
        tags: list[str | None] = []
        position = 0
        for index in range(plan.first, plan.last):
            sentence = sentences[index]
            target = plan.target_first <= index < plan.target_last
            spans.extend((position + start, position + end) for start, end in sentence.spans)
            tags.extend(sentence.tags if target else [None] * len(sentence.spans))
            position += len(sentence.text) + len(SENTENCE_SEPARATOR)
        labels = [IGNORE_INDEX] * len(ids)
        for word, token in enumerate(words.first_tokens(spans, offsets)):
            if token is not None and tags[word] is not None:
                labels[token] = self.label2id[tags[word]]
        # The target sentences' sub-tokens (all of each word's), then context on each side.
        inside = [
            i
            for i, word in enumerate(words.token_words(spans, offsets))
            if word is not None and tags[word] is not None
        ]
        lo, hi = (inside[0], inside[-1] + 1) if inside else (0, min(len(ids), 1))
        hi = min(hi, lo + self.budget)  # a sentence longer than the window loses its end
        spare = self.budget - (hi - lo)
        left = min(lo, self.context, spare)
        right = min(len(ids) - hi, self.context, spare - left)
        lo, hi = lo - left, hi + right
        input_ids = self.prefix + ids[lo:hi] + self.suffix
        out = {
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": [IGNORE_INDEX] * len(self.prefix) + labels[lo:hi] + [IGNORE_INDEX] * len(self.suffix),
            "length": len(input_ids),
        }
        if self.config.case_feature:
            # The engine's call on the same characters: special tokens are class 0 there too.
            types = casing.case_type_ids(text, offsets[lo:hi])
            out["token_type_ids"] = [0] * len(self.prefix) + types + [0] * len(self.suffix)
        return out

    def split(self, dataset: datasets.Dataset, rng: random.Random | None) -> Iterator[dict[str, Any]]:
        """Every example of a split; rows of one document are consecutive in the data."""
        has_documents = "document" in dataset.column_names
        current: list[SentenceWords] = []
        current_id: int | None = None
        for batch in dataset.iter(batch_size=1000):
            documents = batch["document"] if has_documents else [-1] * len(batch["tokens"])
            for tokens, tags, document in zip(batch["tokens"], batch["tags"], documents, strict=True):
                # Negative ids: a sentence without a document, never another's context.
                if current and (document != current_id or document < 0):
                    yield from self.document(current, rng)
                    current = []
                current_id = document
                current.append(sentence_words(tokens, tags))
        if current:
            yield from self.document(current, rng)


def _tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else tokenizer.name_or_path
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def encode_split(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    label2id: Mapping[str, int],
    *,
    max_length: int,
    case_feature: bool,
    context_tokens: int = 0,
    no_context_fraction: float = 0.0,
    seed: int = 42,
) -> datasets.Dataset:
    """Encode a split into examples (cached next to the split's Arrow files when it has them)."""
    config = EncodingConfig(max_length, case_feature, context_tokens, no_context_fraction, seed)
    encoder = _Encoder(tokenizer, label2id, config)

    def generate(fingerprint: str) -> Iterator[dict[str, Any]]:
        del fingerprint  # part of the arguments only so that the cache key follows the inputs
        rng = random.Random(seed) if no_context_fraction > 0 else None
        yield from encoder.split(dataset, rng)

    if not dataset.cache_files:  # an in-memory split (tests, small uploads): stay in memory
        rows = list(generate(""))
        return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({})
    parts = [ENCODING_VERSION, dataset._fingerprint, _tokenizer_hash(tokenizer)]
    key = "|".join([*parts, repr(sorted(label2id.items())), repr(config)])
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
    return datasets.Dataset.from_generator(
        generate,
        gen_kwargs={"fingerprint": fingerprint},
        cache_dir=str(Path(dataset.cache_files[0]["filename"]).parent / "encoded"),
        fingerprint=fingerprint,
    )
