"""Model folders with tiny weights, for tests about the registry rather than the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

LABELS = ["O", "B-PER", "I-PER"]


def fake_model_folder(folder: Path) -> Path:
    """The files a trained model folder holds (tiny weights, so the test is about the registry)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "bert",
        "id2label": dict(enumerate(LABELS)),
        "label2id": {k: i for i, k in enumerate(LABELS)},
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"classifier.weight": torch.randn(3, 4)}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text("{}")
    return folder
