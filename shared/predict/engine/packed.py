"""Unpadded forward passes for BERT-family encoders: the Linear layers see real tokens only.

A padded batch costs every sequence the length of the longest. A gateway micro-batch is whatever
32 requests arrived together, 3 to 60+ tokens each, so the engine either pads most of it or splits
it into several small passes; both cost: 32 shuffled CoNLL sentences ran at ~140 sentences/s padded
against ~250 packed here (docs/benchmarks.md#predict). Here the tokens of a pass are packed into one
(tokens x hidden) matrix for the Linear layers, where nearly all of an encoder's FLOPs are, and only
attention, which mixes the tokens of one sequence, sees them padded again: per group of sequences of
similar length, as the engine groups them. Same weights, same operations, in the order transformers
runs them: the logits match its padded forward to float rounding (tests/predict/test_packed.py).

Models of another architecture, or with a feature this does not reproduce (relative positions,
a decoder), keep transformers' own padded forward (``packable``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.predict.engine.batching import group_by_length

# Token-classification models whose encoder layers are transformers' BertLayer, under its own names
# (RoBERTa and XLM-R copy it): embeddings, then attention.self.{query,key,value},
# attention.output.{dense,LayerNorm}, intermediate.{dense,intermediate_act_fn}, output.{dense,LayerNorm},
# then a ``classifier`` over every token.
PACKABLE_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})

# Attention groups: a longer sequence opens a new group when padding the group to it would make more
# than this share of the group's attention rows padding (batching.group_by_length).
ATTENTION_MAX_PADDING = 0.25

_LAYER_PARTS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.self.num_attention_heads",
    "attention.self.scaling",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "intermediate.intermediate_act_fn",
    "output.dense",
    "output.LayerNorm",
)


def packable(model: torch.nn.Module) -> bool:
    """Whether ``packed_logits`` computes exactly what this model's own forward does."""
    config = model.config
    if config.model_type not in PACKABLE_MODEL_TYPES:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return False  # relative position scores are added inside attention, which this does not do
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not callable(getattr(model, "classifier", None)) or not hasattr(base, "embeddings") or not layers:
        return False
    return all(_has(layer, part) for layer in layers for part in _LAYER_PARTS)


def _has(module: object, dotted: str) -> bool:
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return False
    return True


@dataclass(frozen=True)
class _Group:
    """Sequences attending within one padded (sequences x width) block of their packed rows."""

    sequences: int
    width: int
    rows: slice | torch.Tensor  # the group's packed rows: a slice where they are one run
    # Each block slot's packed row: a padding slot repeats its sequence's first row (its key is masked,
    # its query dropped), so the block is one gather, no zero fill. None: no padding, rows are the block.
    sources: torch.Tensor | None
    slots: torch.Tensor | None  # the block slots of the real tokens, in row order
    mask: torch.Tensor | None  # (sequences, 1, 1, width), True for real keys


def _plan_groups(lengths: list[int], device: torch.device) -> list[_Group]:
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    groups = []
    for members in group_by_length(lengths, len(lengths), ATTENTION_MAX_PADDING):
        width = max(lengths[i] for i in members)
        one_run = members == list(range(members[0], members[-1] + 1))  # in packing order: sorted lengths
        if one_run:
            rows: slice | torch.Tensor = slice(starts[members[0]], starts[members[-1] + 1])
            if all(lengths[i] == width for i in members):
                groups.append(_Group(len(members), width, rows, None, None, None))
                continue
        else:
            rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in members]).to(device)
        sources = torch.tensor(
            [starts[i] + (t if t < lengths[i] else 0) for i in members for t in range(width)]
        )
        real = torch.tensor([t < lengths[i] for i in members for t in range(width)])
        mask = real.view(len(members), 1, 1, width)
        slots = real.nonzero().squeeze(1)
        groups.append(
            _Group(len(members), width, rows, sources.to(device), slots.to(device), mask.to(device))
        )
    return groups


def packed_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    lengths: list[int],
) -> torch.Tensor:
    """Logits of every real token, (sum of ``lengths``) x labels, sequence after sequence.

    The inputs are padded as for the model's own forward (each row's real tokens first, ``lengths``
    of them); only the embeddings run on them padded. Call under ``torch.inference_mode()`` on a
    model in eval mode (dropout is skipped). Sorted ``lengths`` keep the attention blocks small.
    """
    base = model.base_model
    embedded = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    real = attention_mask.reshape(-1).nonzero().squeeze(1)
    hidden = embedded.reshape(-1, embedded.shape[-1]).index_select(0, real)
    groups = _plan_groups(lengths, hidden.device)
    for layer in base.encoder.layer:
        attention = layer.attention
        context = _attend(
            attention.self.query(hidden),
            attention.self.key(hidden),
            attention.self.value(hidden),
            groups,
            heads=attention.self.num_attention_heads,
            scale=attention.self.scaling,
        )
        hidden = attention.output.LayerNorm(attention.output.dense(context) + hidden)
        inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))
        hidden = layer.output.LayerNorm(layer.output.dense(inner) + hidden)
    return model.classifier(hidden)


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    groups: list[_Group],
    *,
    heads: int,
    scale: float,
) -> torch.Tensor:
    """Scaled dot-product attention of packed (tokens x hidden) projections, group by group."""
    context = torch.empty_like(query)
    size = query.shape[-1]
    for group in groups:
        shape = (group.sequences, group.width, heads, size // heads)
        if group.sources is None:
            q, k, v = (t[group.rows].view(shape).transpose(1, 2) for t in (query, key, value))
        else:  # index_select: several times faster than filling a zero block with index_copy_
            q, k, v = (
                t.index_select(0, group.sources).view(shape).transpose(1, 2) for t in (query, key, value)
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask, scale=scale)
        out = out.transpose(1, 2).reshape(-1, size)
        if group.slots is not None:
            out = out.index_select(0, group.slots)
        if isinstance(group.rows, slice):
            context[group.rows] = out
        else:
            context.index_copy_(0, group.rows, out)
    return context
