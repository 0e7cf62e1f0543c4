"""A registry version as a Hugging Face Hub model folder, and its upload.

``export_version`` writes what the Hub and ``transformers`` accept as a token-classification
model: the weights, the tokenizer, ``config.json`` with ``id2label``, and a model card whose YAML
metadata carries ``pipeline_tag``, ``datasets`` and a ``model-index`` with the registry's per-type
F1. The folder also holds the service's own decoding as a custom pipeline (``ner_pipeline.py``,
registered in ``config.json`` under ``custom_pipelines``): with ``trust_remote_code=True``,
``transformers.pipeline(model=folder)`` gives the same word-level entities as ``/predict/``, the
word-case feature included. The pipeline's helpers are this service's own modules, copied.

``push_folder`` uploads a folder with ``huggingface_hub`` (``create_repo`` + ``upload_folder``,
passed in so that tests need no Hub).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from shared.predict import casing
from shared.predict.engine import spans, windows, words
from shared.registry.manifest import MANIFEST
from shared.training.errors import DataError
from trainer.card import CARD_FILE, METRICS_FILE

PIPELINE_MODULE = "ner_pipeline"
PIPELINE_CLASS = "NerServiceTokenClassificationPipeline"
# The service's pure-Python modules the pipeline runs, copied under these names.
HELPERS: dict[str, Any] = {
    "ner_words": words,
    "ner_casing": casing,
    "ner_windows": windows,
    "ner_spans": spans,
}
_IMPORT_REWRITES = {
    "from shared.predict.schemas import Entity": "from .ner_entity import Entity",
    "from shared.predict.engine.words import": "from .ner_words import",
    "from shared.predict.engine import words": "from . import ner_words as words",
    "from shared.predict import casing": "from . import ner_casing as casing",
}
# Files of a version folder that are the registry's own, not the model's.
_NOT_EXPORTED = {MANIFEST, CARD_FILE, METRICS_FILE}

ENTITY_SOURCE = '''"""The entity the service's decoder builds (its pydantic ``Entity``, as a dataclass)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Entity:
    word: str
    entity_group: str
    score: float
    start: int
    end: int
'''

PIPELINE_SOURCE = '''"""The NER service's decoding as a ``transformers`` pipeline (trust_remote_code=True).

Entities are whole words (the service's own definition of a word, ``ner_words.py``), each word
labelled by its first sub-token; long texts go through overlapping windows; a model trained with
the word-case feature gets its case token-type ids. Same answers as the service's ``/predict/``.
"""

import numpy as np
import torch
from transformers import Pipeline

from .ner_casing import case_type_ids, uses_case_feature
from .ner_spans import decode_entities
from .ner_windows import plan_windows
from .ner_words import first_tokens, split_words

WINDOW_TOKENS = 256  # the service's NER_MAX_WINDOW_TOKENS default
STRIDE_TOKENS = 64  # and NER_WINDOW_STRIDE_TOKENS


class NerServiceTokenClassificationPipeline(Pipeline):
    def _sanitize_parameters(self, ignore_labels=None, aggregation_strategy=None, stride=None, **kwargs):
        # aggregation_strategy is accepted for compatibility: entities are always whole words.
        postprocess = {"ignore_labels": list(ignore_labels)} if ignore_labels is not None else {}
        return {}, {}, postprocess

    def _special_tokens(self):
        probe = self.tokenizer("a", return_special_tokens_mask=True)
        ids, mask = probe["input_ids"], probe["special_tokens_mask"]
        content = [i for i, special in enumerate(mask) if not special]
        return ids[: content[0]], ids[content[-1] + 1 :]

    def preprocess(self, text):
        encoded = self.tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            truncation=False,
            verbose=False,
        )
        return {"text": text, "ids": encoded["input_ids"], "offsets": encoded["offset_mapping"]}

    def _forward(self, inputs):
        text, ids, offsets = inputs["text"], inputs["ids"], inputs["offsets"]
        prefix, suffix = self._special_tokens()
        config = self.model.config
        limit = min(WINDOW_TOKENS, getattr(config, "max_position_embeddings", 512) or 512)
        if 0 < self.tokenizer.model_max_length < 100_000:
            limit = min(limit, self.tokenizer.model_max_length)
        size = limit - len(prefix) - len(suffix)
        stride = min(STRIDE_TOKENS, size // 2)
        type_ids = case_type_ids(text, offsets) if uses_case_feature(config) else None
        parts = []
        for window in plan_windows(0, len(ids), size, stride):
            window_ids = prefix + ids[window.start : window.end] + suffix
            model_inputs = {
                "input_ids": torch.tensor([window_ids], device=self.device),
                "attention_mask": torch.ones((1, len(window_ids)), dtype=torch.long, device=self.device),
            }
            if type_ids is not None:
                window_types = [0] * len(prefix) + type_ids[window.start : window.end] + [0] * len(suffix)
                model_inputs["token_type_ids"] = torch.tensor([window_types], device=self.device)
            with torch.inference_mode():
                logits = self.model(**model_inputs).logits[0]
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            probs = probs[len(prefix) : len(prefix) + window.end - window.start]
            parts.append(probs[window.own_start - window.start : window.own_end - window.start])
        return {"text": text, "offsets": offsets, "probs": np.concatenate(parts) if parts else None}

    def postprocess(self, outputs, ignore_labels=("O",)):
        text, probs = outputs["text"], outputs["probs"]
        if probs is None:
            return []
        word_spans = split_words(text)
        first = first_tokens(word_spans, outputs["offsets"])
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        entities = decode_entities(text, word_spans, first, probs, id2label, frozenset(ignore_labels))
        return [
            {"entity_group": e.entity_group, "score": e.score, "word": e.word, "start": e.start, "end": e.end}
            for e in entities
        ]
'''


def _helper_source(module: Any) -> str:
    source = Path(module.__file__).read_text(encoding="utf-8")
    for old, new in _IMPORT_REWRITES.items():
        source = source.replace(old, new)
    leftover = re.search(r"^\s*(from|import) shared\b.*$", source, re.MULTILINE)
    if leftover:  # a helper grew an import the exported folder cannot satisfy: fail here, not on the Hub
        raise RuntimeError(
            f"{module.__name__} imports {leftover.group().strip()!r}; add a rewrite in export.py"
        )
    return source


def _dataset_names(data_ref: Mapping[str, Any]) -> list[str]:
    """Hub ids of the data as given; a local file or folder by the name of its folder (``conll2003``)."""
    names: list[str] = []
    for ref in data_ref.values():
        if not isinstance(ref, str) or not ref:
            continue
        hub = ref.removeprefix("hf:")
        path = Path(ref)
        name = hub if ref.startswith("hf:") or (not path.is_absolute() and not path.exists()) else None
        name = name or (path.name if path.is_dir() else path.parent.name) or path.stem
        if name not in names:
            names.append(name)
    return names


def _scores(metrics: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    for split in ("test", "validation"):
        report = metrics.get(split)
        if isinstance(report, Mapping) and isinstance(report.get("f1"), int | float):
            return split, report
    return None


def card_metadata(*, version: int, row: Any, name: str) -> dict[str, Any]:
    """The model card's YAML metadata: pipeline tag, datasets and the registry's scores as model-index."""
    datasets = _dataset_names(row.data_ref or {})
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "token-classification",
        "tags": ["token-classification", "ner", "custom_code"],
        "datasets": datasets,
    }
    base = row.base_model or ""
    if base and not Path(base).is_absolute() and re.fullmatch(r"[\w.-]+/[\w.-]+", base):
        metadata["base_model"] = base
    scored = _scores(row.metrics or {})
    if scored is not None:
        split, report = scored
        metrics = [{"type": "f1", "value": round(float(report["f1"]), 4), "name": "F1 (micro, entity level)"}]
        for kind, scores in sorted((report.get("per_type") or {}).items()):
            if isinstance(scores, Mapping) and isinstance(scores.get("f1"), int | float):
                metrics.append({"type": "f1", "value": round(float(scores["f1"]), 4), "name": f"F1 {kind}"})
        dataset = datasets[0] if datasets else "custom"
        metadata["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "token-classification", "name": "Named Entity Recognition"},
                        "dataset": {"name": dataset, "type": dataset, "split": split},
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return metadata


def model_card(*, version: int, row: Any, name: str, case_feature: bool) -> str:
    """The exported README.md: YAML metadata, how to load the model, and the training card below."""
    metadata = card_metadata(version=version, row=row, name=name)
    labels = ", ".join(row.labels or [])
    body = [
        f"# {name}",
        "",
        f"Version {version} of a model trained and served by the NER service. Labels: {labels}.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'ner = pipeline(model="<this repo or folder>", trust_remote_code=True)',
        'ner("Google was founded by Larry Page and Sergey Brin in California.")',
        "```",
        "",
        "`trust_remote_code=True` runs `ner_pipeline.py` from this repository (read it first): the",
        "service's own decoding, so the entities are whole words exactly as the service returns them.",
    ]
    if case_feature:
        body += [
            "This model also reads each token's letter case through its token-type ids",
            f'(`"{casing.CONFIG_KEY}": "{casing.CONFIG_VALUE}"` in config.json); the pipeline computes them.',
            "Without the custom pipeline the plain token-classification pipeline runs with all-zero",
            "type ids and loses that cue.",
        ]
    else:
        body += [
            "Without it, the stock token-classification pipeline loads the model too (sub-token groups)."
        ]
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(body) + "\n"


def export_folder(*, source: Path, out: Path, version: int, row: Any, name: str | None = None) -> Path:
    """Write the Hub folder of a version's ``source`` folder into ``out`` (new or empty)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder")
    if not (source / "config.json").is_file():
        raise DataError(f"version {version}: its folder has no config.json")
    name = name or f"ner-service-v{version}"
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in _NOT_EXPORTED and path.suffix not in (".py", ".pyc"):
            shutil.copy2(path, out / path.name)
    for module_name, module in HELPERS.items():
        (out / f"{module_name}.py").write_text(_helper_source(module), encoding="utf-8")
    (out / "ner_entity.py").write_text(ENTITY_SOURCE, encoding="utf-8")
    (out / f"{PIPELINE_MODULE}.py").write_text(PIPELINE_SOURCE, encoding="utf-8")
    config = json.loads((out / "config.json").read_text())
    config["custom_pipelines"] = {
        "token-classification": {
            "impl": f"{PIPELINE_MODULE}.{PIPELINE_CLASS}",
            "pt": ["AutoModelForTokenClassification"],
            "tf": [],
            "type": "text",
        }
    }
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    case_feature = config.get(casing.CONFIG_KEY) == casing.CONFIG_VALUE
    (out / CARD_FILE).write_text(model_card(version=version, row=row, name=name, case_feature=case_feature))
    if (source / CARD_FILE).is_file():  # the training card (data, epochs, confusion) travels along
        (out / "TRAINING.md").write_text((source / CARD_FILE).read_text())
    return out


def push_folder(
    folder: Path,
    *,
    repo_id: str,
    token: str,
    private: bool,
    create_repo: Callable[..., Any],
    upload_folder: Callable[..., Any],
) -> Any:
    """Create the Hub repository (if needed) and upload the folder as one commit."""
    create_repo(repo_id=repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    return upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        token=token,
        repo_type="model",
        commit_message="Upload from the NER service (ner models push)",
    )
