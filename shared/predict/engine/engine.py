"""The inference engine: a token-classification model predicting entities for a list of texts."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from shared.predict import casing
from shared.predict.engine import words
from shared.predict.engine.batching import WIDTH_BUCKET, bucket_width, group_by_length, split_for_lanes
from shared.predict.engine.errors import ModelLoadError
from shared.predict.engine.lanes import run_in_lanes
from shared.predict.engine.packed import packable, packed_logits
from shared.predict.engine.runtime import (
    TOKENS_PER_LANE,
    TOKENS_PER_THREAD,
    bound_shape_caches,
    configure_cpu_threads,
    has_full_range_activations,
    intra_op_threads,
    pick_device,
    prepare_model,
    resolve_precision,
)
from shared.predict.engine.spans import decode_entities
from shared.predict.engine.windows import plan_windows
from shared.predict.schemas import Entity

if TYPE_CHECKING:
    from shared.core.config import Settings

log = logging.getLogger(__name__)

# Lone surrogates can arrive through JSON escapes ("\ud800"); the tokenizer cannot encode them.
# Replacing each by U+FFFD keeps every character offset the same.
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class EngineOptions:
    device: str = "auto"  # auto | cpu | cuda
    # auto | fp32 | bf16 | fp16 | int8 (runtime.resolve_precision). fp32 by default here, so a direct
    # library call is exact and reproducible; the service's NER_PRECISION defaults to auto.
    precision: str = "fp32"
    quantize: str = "none"  # none | int8: the older setting, int8 here means precision int8
    num_threads: int | None = None
    batch_size: int = 32  # windows per forward pass
    max_window_tokens: int = 256  # including the special tokens
    stride_tokens: int = 64  # overlap between consecutive windows
    # Batch widths rounded up to a bounded set of widths, steps of this at the shortest
    # (batching.bucket_width), so shape caches stop growing (issue 21); 1: to the longest window.
    width_bucket: int = WIDTH_BUCKET
    # Unpadded passes (packed.py) for the encoders that have them (int8 only with 8-bit activations);
    # False: transformers' padded forward.
    packing: bool = True
    # CPU only. Passes run at once (lanes.py), each on threads / lanes intra-op threads; None: up to
    # one per thread; 1: one pass at a time on every thread.
    lanes: int | None = None
    # A CPU pass gets an intra-op thread per this many tokens, up to its lane's share
    # (runtime.TOKENS_PER_THREAD): small passes run on one thread.
    tokens_per_thread: int = TOKENS_PER_THREAD
    # A CPU call runs at most one lane per this many tokens (runtime.TOKENS_PER_LANE).
    tokens_per_lane: int = TOKENS_PER_LANE

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        return cls(
            device=settings.device,
            precision=settings.precision,
            quantize=settings.quantize,
            num_threads=settings.num_threads,
            batch_size=settings.engine_batch_size,
            max_window_tokens=settings.max_window_tokens,
            stride_tokens=settings.window_stride_tokens,
            packing=settings.engine_packing,
            lanes=settings.engine_lanes,
            tokens_per_thread=settings.engine_tokens_per_thread,
            tokens_per_lane=settings.engine_tokens_per_lane,
        )

    @property
    def requested_precision(self) -> str:
        """``precision``, with the older ``quantize="int8"`` meaning int8."""
        return "int8" if self.quantize == "int8" else self.precision

    def resolved_precision(self) -> str:
        """What an engine loaded with these options runs in on this machine (``auto`` resolved)."""
        return resolve_precision(self.requested_precision, pick_device(self.device))


@dataclass
class _Encoded:
    ids: list[int]
    spans: list[tuple[int, int]]  # the text's words (words.split_words)
    first: list[int | None]  # each word's first sub-token (words.first_tokens), as in training
    type_ids: list[int] | None  # case classes, for models trained with the case feature

    def window(self, start: int, end: int) -> _Slice:
        types = self.type_ids[start:end] if self.type_ids is not None else None
        return _Slice(self.ids[start:end], types)


@dataclass
class _Slice:
    ids: list[int]
    type_ids: list[int] | None


class NerEngine:
    """Predicts word-level entity groups; thread-safe, any text length, any Unicode."""

    def __init__(self, model, tokenizer, *, source: str, options: EngineOptions) -> None:  # type: ignore[no-untyped-def]
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(f"{source}: a fast (Rust) tokenizer is needed for character offsets")
        self.source = source
        self.options = options
        self.device = pick_device(options.device)
        self.threads: int | None = None
        if self.device.type == "cpu":
            bound_shape_caches()  # before this process's first forward pass
            self.threads = configure_cpu_threads(options.num_threads)
        self.model, self.precision = prepare_model(
            model, self.device, resolve_precision(options.requested_precision, self.device)
        )
        # int8 activations share one scale per Linear input, and a packed pass holds more tokens under
        # it (32 windows, however mixed their lengths). With 7-bit activations (CPUs without VNNI) that
        # cost 0.34 F1 points on whole eng.testb documents (0.8843 against 0.8877 padded), so int8 packs
        # only with 8-bit ones: there packed scored 0.8822 / 0.8875 (sentences / documents) against
        # padded 0.8821 / 0.8866, fp32 0.8838 / 0.8885 (docs/benchmarks.md#quality).
        self.packed = (
            options.packing
            and packable(self.model)
            and (self.precision != "int8" or has_full_range_activations(self.model))
        )
        self.tokenizer = tokenizer
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        self.case_feature = casing.uses_case_feature(model.config)
        self._prefix, self._suffix = _special_tokens(tokenizer)
        limit = min(
            options.max_window_tokens,
            getattr(model.config, "max_position_embeddings", 512) or 512,
            tokenizer.model_max_length if 0 < tokenizer.model_max_length < 100_000 else 512,
        )
        self.window_tokens = limit - len(self._prefix) - len(self._suffix)
        self._max_width = limit  # a bucketed batch is never wider than the model takes
        self.stride_tokens = min(options.stride_tokens, self.window_tokens // 2)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # The Rust tokenizer object is not safe to call from several threads at once.
        self._tokenizer_lock = threading.Lock()
        self.forward_passes = 0

    @classmethod
    def load(cls, source: str | Path, options: EngineOptions | None = None) -> NerEngine:
        """Load a token-classification checkpoint (local folder or hub id) with its fast tokenizer."""
        options = options or EngineOptions()
        source = str(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            # safetensors only: a pickle checkpoint (pytorch_model.bin) runs code when loaded.
            # fp32 whatever the files hold: the shipped default model is stored fp16 (half the size);
            # prepare_model then casts or quantizes it to the precision it runs in.
            model = AutoModelForTokenClassification.from_pretrained(
                source, use_safetensors=True, dtype=torch.float32
            )
        except Exception as exc:  # a bad folder fails in many ways (config, weights, tokenizer files)
            raise ModelLoadError(f"cannot load a token-classification model from {source!r}: {exc}") from exc
        engine = cls(model, tokenizer, source=source, options=options)
        log.info(
            "loaded %s on %s (%s%s)",
            source,
            engine.device,
            engine.precision,
            ", packed" if engine.packed else "",
        )
        return engine

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]

    def predict(self, texts: Sequence[str]) -> list[list[Entity]]:
        """Entities of each text, in order. Long texts are windowed; all windows share the batches."""
        if not texts:
            return []
        encoded = self._encode(texts)
        windows = [
            window
            for index, enc in enumerate(encoded)
            for window in plan_windows(index, len(enc.ids), self.window_tokens, self.stride_tokens)
        ]
        window_probs = self._forward([encoded[w.text_index].window(w.start, w.end) for w in windows])
        owned: list[list[np.ndarray]] = [[] for _ in texts]
        for window, probs in zip(windows, window_probs, strict=True):
            owned[window.text_index].append(
                probs[window.own_start - window.start : window.own_end - window.start]
            )
        results = []
        for text, enc, parts in zip(texts, encoded, owned, strict=True):
            if not parts:
                results.append([])
                continue
            probs = np.concatenate(parts)
            results.append(decode_entities(text, enc.spans, enc.first, probs, self.id2label))
        return results

    def _encode(self, texts: Sequence[str]) -> list[_Encoded]:
        clean = [_SURROGATES.sub("\ufffd", text) for text in texts]
        with self._tokenizer_lock:
            batch = tokenize_with_offsets(self.tokenizer, clean)
        encoded = []
        for i, text in enumerate(clean):
            offsets = batch["offset_mapping"][i]
            type_ids = casing.case_type_ids(text, offsets) if self.case_feature else None
            # Words by the engine's own definition, not the tokenizer's: the trainer aligned its labels
            # with the same two calls, so the positions read here are the positions it trained.
            spans = words.split_words(text)
            first = words.first_tokens(spans, offsets)
            encoded.append(_Encoded(batch["input_ids"][i], spans, first, type_ids))
        return encoded

    def _padded_inputs(self, windows: Sequence[_Slice], width: int) -> dict[str, torch.Tensor]:
        """The model's inputs for ``windows`` with their special tokens, each row padded to ``width``."""
        prefix, suffix = self._prefix, self._suffix
        input_ids = torch.full((len(windows), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(windows), width), dtype=torch.long)
        # Special tokens and padding have no characters: case class 0, as in training.
        type_ids = torch.zeros((len(windows), width), dtype=torch.long)
        for row, window in enumerate(windows):
            ids = prefix + window.ids + suffix
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
            if window.type_ids is not None:
                type_ids[row, len(prefix) : len(prefix) + len(window.ids)] = torch.tensor(window.type_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention}
        if self.case_feature:
            inputs["token_type_ids"] = type_ids
        return {name: tensor.to(self.device) for name, tensor in inputs.items()}

    def _forward(self, windows: list[_Slice]) -> list[np.ndarray]:
        """Label probabilities per window (content tokens only), ``batch_size`` windows a pass.

        Packed passes (packed.py) take windows in length order, as many as fit; padded ones also
        start a new pass where padding the shorter windows would waste more than a quarter of it.
        On CPU a call's passes run in lanes (lanes.py): a micro-batch too is split into one pass a lane.
        """
        specials = len(self._prefix) + len(self._suffix)
        lengths = [len(w.ids) + specials for w in windows]
        max_padding = 1.0 if self.packed else 0.25  # 1.0: padding never splits a pass
        chunks = group_by_length(lengths, self.options.batch_size, max_padding)
        lanes = self._lanes(sum(lengths))
        chunks = split_for_lanes(chunks, lengths, lanes)
        # Longest pass first: each lane takes the next pass when done, so the shortest come last and
        # the lanes finish together. Shortest first left one lane alone with a call's longest pass: a
        # bulk worker's 256-document calls ran one pass at a time for 21% of the job.
        chunks.sort(key=lambda chunk: sum(lengths[index] for index in chunk), reverse=True)
        lanes = max(1, min(lanes, len(chunks)))  # a window is never cut: one window is one lane
        lane_threads = (self.threads or 1) // lanes
        passes = run_in_lanes(
            lambda chunk: self._pass(windows, chunk, [lengths[index] for index in chunk], lane_threads),
            chunks,
            lanes,
        )
        self.forward_passes += len(chunks)
        out: list[np.ndarray] = [np.empty((0, len(self.id2label)), dtype=np.float32)] * len(windows)
        for chunk, probs in zip(chunks, passes, strict=True):
            for index, rows in zip(chunk, probs, strict=True):
                out[index] = rows[len(self._prefix) : len(self._prefix) + len(windows[index].ids)]
        return out

    def _pass(
        self, windows: list[_Slice], chunk: list[int], lengths: list[int], lane_threads: int
    ) -> list[np.ndarray]:
        """One forward pass over ``windows[chunk]`` (in length order, ``lengths`` with their special
        tokens): each window's probabilities, its special tokens included."""
        width = lengths[-1]  # the longest: the chunk is in length order
        if not self.packed:  # packed, only the embeddings see the width: the rest sees tokens x hidden
            width = bucket_width(width, self.options.width_bucket, self._max_width)
        inputs = self._padded_inputs([windows[index] for index in chunk], width)
        tokens = sum(lengths) if self.packed else len(chunk) * width
        with torch.inference_mode(), intra_op_threads(self._pass_threads(tokens, lane_threads)):
            if self.packed:
                logits = packed_logits(
                    self.model,
                    inputs["input_ids"],
                    inputs["attention_mask"],
                    inputs.get("token_type_ids"),
                    lengths,
                )
            else:
                logits = self.model(**inputs).logits
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        # Packed: the chunk's rows one after another; padded: one row per window.
        return np.split(probs, np.cumsum(lengths)[:-1]) if self.packed else list(probs)

    def _lanes(self, tokens: int) -> int:
        """Passes to run at once for a call over ``tokens`` tokens: at most one per thread (or
        ``lanes``), and one per ``tokens_per_lane`` tokens."""
        if self.threads is None:  # CUDA: one pass at a time
            return 1
        return min(
            self.options.lanes or self.threads, self.threads, _one_per(tokens, self.options.tokens_per_lane)
        )

    def _pass_threads(self, tokens: int, lane_threads: int) -> int | None:
        """Intra-op threads for a CPU pass over ``tokens`` tokens: one per ``tokens_per_thread``, up
        to ``lane_threads``; None on CUDA."""
        if self.threads is None:
            return None
        return min(lane_threads, _one_per(tokens, self.options.tokens_per_thread))


def _one_per(tokens: int, size: int) -> int:
    """One per ``size`` of ``tokens``, at least one."""
    return max(1, tokens // max(1, size))


def tokenize_with_offsets(tokenizer, texts: Sequence[str]):  # type: ignore[no-untyped-def]
    """Sub-tokens with character offsets, no special tokens, no truncation: how text is read.

    The engine and the trainer (trainer.encoding) both read text through this call; long texts
    are windowed afterwards, never truncated (hence no length warning).
    """
    return tokenizer(
        list(texts),
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        truncation=False,
        verbose=False,
    )


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
    """The ids the tokenizer puts before and after one sequence ([CLS] ... [SEP], <s> ... </s>)."""
    probe = tokenizer("a", return_special_tokens_mask=True)
    ids, mask = probe["input_ids"], probe["special_tokens_mask"]
    content = [i for i, special in enumerate(mask) if not special]
    return ids[: content[0]], ids[content[-1] + 1 :]
