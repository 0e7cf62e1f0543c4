"""Inference engine shared by the gateway and the workers (no web or queue imports here)."""

import os

# Gateway, inference worker and trainer often share a few cores. OpenMP threads that spin while
# waiting at each barrier then make a small forward pass ~10x slower (measured: p50 585 ms vs
# 63 ms for one sentence on 2 busy cores); sleeping waiters cost little. libgomp reads this when
# torch loads it, so it only helps where the engine is imported before torch (or set it in the
# environment).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from shared.engine.engine import EngineOptions, ModelLoadError, NerEngine
from shared.engine.spans import Entity

__all__ = ["EngineOptions", "Entity", "ModelLoadError", "NerEngine"]
