"""Inference engine shared by the gateway and the workers (no web or queue imports here)."""

import os

# Gateway, inference worker and trainer often share a few cores. OpenMP threads that spin while
# waiting at each barrier then make a small forward pass ~10x slower (measured: p50 585 ms vs
# 63 ms for one sentence on 2 busy cores); sleeping waiters cost little. libgomp reads this when
# torch loads it, so it only helps where the engine is imported before torch (or set it in the
# environment).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.predict.engine.engine import EngineOptions, NerEngine
    from shared.predict.engine.errors import ModelLoadError

# Exported lazily (PEP 562): importing ``ModelLoadError`` must not load torch, so a
# gateway that does not serve /predict (NER_SERVE_PREDICT=false) stays small.
_EXPORTS = {
    "EngineOptions": "shared.predict.engine.engine",
    "NerEngine": "shared.predict.engine.engine",
    "ModelLoadError": "shared.predict.engine.errors",
}
__all__ = ["EngineOptions", "ModelLoadError", "NerEngine"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
