"""A long-running engine's memory does not climb with the batch shapes it meets (issue 21).

torch keeps a kernel per input shape in two caches (oneDNN's and ideep's) of 1024 entries each; the
engine caps both (``shared.predict.engine.runtime.bound_shape_caches``). Each case runs a fresh
process: the engine over 200 batches of new (texts x width) shapes, RSS after a heap trim before
and after. With the caps RSS stays flat; with the operator's own value of 1024 kept for both, the
same run grows, which shows that the measurement sees what the caps prevent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.predict.engine.runtime import SHAPE_CACHE_CAPACITY, cpu_has_native_bf16

pytestmark = [
    pytest.mark.slow,
    # fp32 Linear layers run on MKL, which keeps no per-shape kernels: the caches fill in bf16.
    pytest.mark.skipif(not cpu_has_native_bf16(), reason="the caches fill in bf16 (needs AVX512-BF16)"),
]

_GROWTH_OVER_NEW_SHAPES = """
import random, sys
import psutil
from shared.predict.engine import EngineOptions, NerEngine
from worker.runtime import trim_heap

engine = NerEngine.load(sys.argv[1], EngineOptions(precision="bf16", num_threads=2))
shapes = [(texts, words) for texts in range(1, 21) for words in range(4, 124, 10)]  # 240 shapes
random.Random(0).shuffle(shapes)

def run(part):
    for texts, words in part:  # same-length texts: one forward pass of that batch shape
        engine.predict([" ".join(["Paris"] * words)] * texts)
    trim_heap()
    return psutil.Process().memory_info().rss / 2**20

before = run(shapes[:40])
print(run(shapes[40:]) - before)
"""


def _growth_mb(model: Path, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _GROWTH_OVER_NEW_SHAPES, str(model)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def test_rss_stays_flat_over_new_batch_shapes_and_an_operators_cache_size_is_kept(
    tiny_model_dir: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SHAPE_CACHE_CAPACITY}
    capped = _growth_mb(tiny_model_dir, env)
    chosen = _growth_mb(tiny_model_dir, {**env, **dict.fromkeys(SHAPE_CACHE_CAPACITY, "1024")})
    assert capped < 20, f"RSS grew {capped:.0f} MB over 200 new batch shapes with the caches capped"
    assert chosen > capped + 40, (
        f"an operator's capacity of 1024 was not kept, or the run no longer fills it: {chosen:.0f} MB "
        f"against {capped:.0f} MB capped"
    )
