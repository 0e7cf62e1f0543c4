"""The model a run starts from: a plain encoder (new head) or a token classifier to continue training."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from shared.core.config import get_settings
from shared.predict import casing
from shared.training.errors import DataError
from shared.training.references import HubModelRef, ModelInfo, check_hub_base_model
from trainer.data import LoadedData, first_origin_of

log = logging.getLogger(__name__)

_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


class BaseModelError(DataError):
    """The base model cannot be used: unknown, not a fast tokenizer, or a head that does not fit."""


@dataclass
class StartingPoint:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    continuing: bool  # the base already had a token-classification head for these labels
    case_feature: bool


def hub_source(base_model: str, *, model_info: ModelInfo | None = None) -> tuple[str, dict[str, str]]:
    """Where from_pretrained reads the base model, and its pinned revision ("owner/name@<sha>").

    A pinned Hub model other than the operator's NER_BASE_MODEL is checked against
    NER_BASE_MODEL_MAX_BYTES here, from the Hub's file listing, before anything is downloaded.
    """
    ref = HubModelRef.parse(base_model)
    if ref is None:
        return base_model, {}
    settings = get_settings()
    if base_model != settings.base_model:
        check_hub_base_model(ref, max_bytes=settings.base_model_max_bytes, model_info=model_info)
    return ref.repo_id, {"revision": ref.revision}


def load_base_config(base_model: str, **source: str) -> PretrainedConfig:
    """The base model's config; an unknown name fails here, before anything heavy is loaded."""
    try:
        return AutoConfig.from_pretrained(base_model, **source)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BaseModelError(
            f"unknown base model {base_model!r}: not a local model folder and not loadable from the "
            f"Hugging Face Hub ({first})"
        ) from None


def head_labels(config: PretrainedConfig) -> list[str] | None:
    """The label set of an existing token-classification head, or None for a plain encoder."""
    architectures = getattr(config, "architectures", None) or []
    if not any(name.endswith("ForTokenClassification") for name in architectures):
        return None
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    labels = [id2label[i] for i in sorted(id2label)]
    if not labels or all(_GENERIC_LABEL.match(label) for label in labels):
        return None
    return labels


def check_labels(base_model: str, config: PretrainedConfig, data: LoadedData) -> tuple[list[str], bool]:
    """The label order to train with, and whether the base's head is continued.

    Continuing needs every tag of the data in the head's label set; the head's order is kept so
    its weights stay meaningful.
    """
    existing = head_labels(config)
    if existing is None:
        return data.labels, False
    extra = set(data.labels) - set(existing)
    if extra:
        where = first_origin_of(data, extra)
        raise BaseModelError(
            f"{where} is not in the label set of base model {base_model!r} "
            f"({', '.join(existing)}); the data's labels must match the checkpoint's head"
        )
    return existing, True


def _enable_case_feature(model: PreTrainedModel) -> bool:
    """Grow the token-type embeddings to one row per case class; False where the model has none."""
    embeddings = getattr(model.base_model, "embeddings", None)
    token_types = getattr(embeddings, "token_type_embeddings", None)
    if not isinstance(token_types, nn.Embedding):
        log.info("case feature off: %s has no token-type embeddings", type(model).__name__)
        return False
    if casing.uses_case_feature(model.config):
        return True
    old = token_types.weight.data
    grown = nn.Embedding(casing.NUM_CASE_TYPES, old.shape[1])
    with torch.no_grad():
        # Every new row starts as type 0, so the pretrained encoder sees unchanged inputs at first.
        grown.weight.copy_(old[0].expand(casing.NUM_CASE_TYPES, -1))
        rows = min(old.shape[0], casing.NUM_CASE_TYPES)
        grown.weight[:rows] = old[:rows]
    embeddings.token_type_embeddings = grown
    # The position-ids style buffer BERT keeps for absent token_type_ids stays valid (zeros).
    model.config.type_vocab_size = casing.NUM_CASE_TYPES
    setattr(model.config, casing.CONFIG_KEY, casing.CONFIG_VALUE)
    return True


def load_starting_point(
    base_model: str, data: LoadedData, *, case_feature: bool, model_info: ModelInfo | None = None
) -> StartingPoint:
    """Tokenizer and model for a run; every check that can fail does so before training starts."""
    name, source = hub_source(base_model, model_info=model_info)
    config = load_base_config(name, **source)
    labels, continuing = check_labels(base_model, config, data)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **source)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"base model {base_model!r}: its tokenizer cannot be loaded ({exc})") from None
    if not tokenizer.is_fast:
        raise BaseModelError(f"base model {base_model!r}: needs a fast tokenizer (word ids for labels)")
    id2label = dict(enumerate(labels))
    model = AutoModelForTokenClassification.from_pretrained(
        name,
        **source,
        dtype=torch.float32,  # a base stored in fp16 (the shipped default model) trains in fp32
        num_labels=len(labels),
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
    )
    if casing.uses_case_feature(config):
        case_feature = True  # continuing a model trained with case ids: it needs them
    enabled = _enable_case_feature(model) if case_feature else False
    return StartingPoint(model, tokenizer, labels, continuing, enabled)
