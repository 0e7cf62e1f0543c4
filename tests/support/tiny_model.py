"""A real, small token-classification checkpoint for tests: the bundled encoder fine-tuned for seconds.

Not a good model, but a real one: the same files a training run publishes (config with
id2label/label2id, weights, fast tokenizer), and good enough that a plain news sentence yields
sensible PER / ORG / LOC groups. The conftest fixture caches the folder by a hash of this file.
"""

from __future__ import annotations

import fcntl
import hashlib
import random
import shutil
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from shared.core.config import bundled_base_model
from trainer.conll import Sentence, read_conll
from trainer.encoding import encode_split

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO_ROOT / ".ner" / "test-cache"

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

SEED = 13
SENTENCES = 300
MAX_WORDS = 40
EPOCHS = 5
BATCH_SIZE = 16
LEARNING_RATE = 3e-4


def _pick_sentences(conll_dir: Path) -> list[Sentence]:
    """Entity-bearing sentences spread over the whole file: more variety than the first few hundred."""
    pool = [
        s
        for s in read_conll(conll_dir / "eng.train", limit=6000)
        if any(t != "O" for t in s.tags) and 4 <= len(s.tokens) <= MAX_WORDS
    ]
    random.Random(SEED).shuffle(pool)
    # Sorted by length so each batch pads little: training time is mostly padding otherwise.
    return sorted(pool[:SENTENCES], key=lambda s: len(s.tokens))


def _encode(tokenizer, sentences: list[Sentence]) -> list[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """Batches labelled as every run labels them (``trainer.encoding``: the engine's words)."""
    label2id = {label: i for i, label in enumerate(LABELS)}
    rows = datasets.Dataset.from_dict(
        {"tokens": [s.tokens for s in sentences], "tags": [s.tags for s in sentences]}
    )
    encoded = encode_split(rows, tokenizer, label2id, max_length=96, case_feature=False)
    pad = tokenizer.pad_token_id
    batches = []
    for start in range(0, len(encoded), BATCH_SIZE):
        chunk = encoded[start : start + BATCH_SIZE]
        width = max(len(ids) for ids in chunk["input_ids"])
        input_ids = torch.full((len(chunk["input_ids"]), width), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for row, (ids, row_labels) in enumerate(zip(chunk["input_ids"], chunk["labels"], strict=True)):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor(row_labels)
        batches.append({"input_ids": input_ids, "attention_mask": attention, "labels": labels})
    return batches


def build_tiny_model(out_dir: Path, conll_dir: Path) -> Path:
    """Fine-tune the bundled encoder briefly on CoNLL train sentences; save model + tokenizer."""
    torch.manual_seed(SEED)
    base = bundled_base_model()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForTokenClassification.from_pretrained(
        base,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    batches = _encode(tokenizer, _pick_sentences(conll_dir))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    total = EPOCHS * len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
    order = random.Random(SEED)
    model.train()
    for _ in range(EPOCHS):
        order.shuffle(batches)
        for batch in batches:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def cached_tiny_model(conll_dir: Path, cache_root: Path = CACHE_ROOT) -> Path:
    """The tiny model, built once per version of this file; a lock keeps parallel test runs to one build."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    target = cache_root / f"tiny-model-{digest}"
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / f"tiny-model-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            partial = cache_root / f"tiny-model-{digest}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            build_tiny_model(partial, conll_dir)
            partial.rename(target)  # atomic: a half-written folder is never used
    return target
