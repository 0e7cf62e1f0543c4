"""Where and how the model runs: device, numeric precision (fp32, bf16, fp16, int8) and CPU threads."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator

import torch

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    """``cuda`` when asked for or available (``auto``), else ``cpu``."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("NER_DEVICE=cuda but no CUDA device is available")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_threads(requested: int | None = None) -> int:
    """The cores this process may run on (cgroup/affinity aware), unless set explicitly."""
    if requested:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16); emulated bf16 is slower
    than fp32, so only these CPUs get it by default."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(
    requested: str, device: torch.device, *, native_bf16: bool | None = None, cuda_bf16: bool | None = None
) -> str:
    """The numeric mode to run in: ``auto`` picks by the hardware, an explicit choice is kept.

    auto: on CUDA bf16 where the GPU has it (Ampere and later), else fp16; on CPU bf16 where the
    cores multiply it natively (its engine F1 on CoNLL eng.testb is within 0.1 point of fp32,
    docs/benchmarks.md), else fp32. int8 is CPU-only (dynamic quantization); CUDA runs fp16 instead.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if requested == "int8":
            log.warning("NER_PRECISION=int8 applies to CPU only; running fp16 on CUDA")
            return "fp16"
        if requested == "auto":
            has_bf16 = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
            return "bf16" if has_bf16 else "fp16"
        return requested
    if requested == "auto":
        return "bf16" if (cpu_has_native_bf16() if native_bf16 is None else native_bf16) else "fp32"
    return requested


def prepare_model(
    model: torch.nn.Module, device: torch.device, precision: str
) -> tuple[torch.nn.Module, str]:
    """Move the model for inference in ``precision`` (already resolved, see ``resolve_precision``);
    returns it and the mode it runs in.

    bf16/fp16 cast the weights (half the memory traffic; AMX / tensor cores); the engine turns the
    logits back to fp32 before the softmax. int8 is dynamic quantization of the encoder's Linear
    layers (weights int8 per output channel, activations quantized on the fly), where nearly all of
    an encoder's FLOPs are; the classifier head, the first encoder layer and the second one's
    attention stay fp32 (``INT8_KEEP_FP32``).
    """
    model.eval()
    if precision == "int8":
        if device.type == "cuda":
            return model.half().to(device), "fp16"
        return quantize_int8(model), "int8"
    if precision == "bf16":
        return model.to(device=device, dtype=torch.bfloat16), "bf16"
    if precision == "fp16":
        return model.to(device=device, dtype=torch.float16), "fp16"
    return model.to(device), "fp32"


# Linear layers int8 leaves in fp32, by name: the token classifier (a 384x9 layer: no time, but its
# rounding moves entity boundaries), the whole first encoder layer and the second one's attention.
# Quantizing one layer group at a time and scoring whole eng.testb documents (bench/int8.py --search,
# docs/benchmarks.md#precision) showed no one kind of Linear (q, k, v, attention out, FFN in, FFN out)
# matters across layers, but the first layers do: their inputs are close to the embeddings, whose
# few large channels set the per-tensor activation scale and leave the other channels a handful of
# levels. Everything quantized: -0.6 document F1 (8-bit activations); first layer kept: -0.34;
# plus the second layer's attention: -0.08, for 22% of the encoder's Linear FLOPs left in fp32.
INT8_KEEP_FP32 = (r"(^|\.)classifier$", r"\.layer\.0\.", r"\.layer\.1\.attention\.")


def keeps_fp32(name: str) -> bool:
    """Whether int8 leaves the Linear layer ``name`` (a ``named_modules`` name) in fp32."""
    return any(re.search(pattern, name) for pattern in INT8_KEEP_FP32)


def cpu_has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has VNNI int8 dot products (AVX512-VNNI or AVX-VNNI)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni"} & flags)


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """Dynamic int8 Linear whose activations use all 8 bits.

    torch quantizes activations to 7 bits (``reduce_range``) because fbgemm's pre-VNNI kernels sum
    pairs of u8 x s8 products in saturating int16; with VNNI the products accumulate in int32 and
    the eighth bit is free: it halves the activation rounding (+0.4 document F1 on eng.testb).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)


def has_full_range_activations(model: torch.nn.Module) -> bool:
    """Whether ``model`` has int8 Linear layers that quantize their activations to 8 bits."""
    return any(isinstance(module, FullRangeDynamicLinear) for module in model.modules())


def quantize_int8(
    model: torch.nn.Module,
    *,
    full_range: bool | None = None,
    keep_fp32: Callable[[str], bool] = keeps_fp32,
) -> torch.nn.Module:
    """Dynamic int8 quantization of the encoder's Linear layers (per-channel weights), less those
    ``keep_fp32`` names; activations in 8 bits where the CPU has VNNI (``full_range``), else 7."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    full_range = cpu_has_vnni() if full_range is None else full_range
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not keep_fp32(name)
    }
    mapping = {
        torch.nn.Linear: FullRangeDynamicLinear if full_range else torch.ao.nn.quantized.dynamic.Linear
    }
    with warnings.catch_warnings():
        # torch marks its quantized tensor types deprecated; the path still works and is opt-in.
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, mapping=mapping)


# torch keeps a compiled kernel, with its scratch memory, for every input shape it meets, in two caches
# of 1024 entries each: oneDNN's primitive cache and ideep's (the bf16 Linear layers on CPU). A padded
# batch is (texts x width), a packed one (tokens x hidden) for any token count (packed.py), so a
# long-running process meets hundreds of shapes, and its RSS climbs
# for hours before it levels off: a pool child rose 528 -> 601 MB over 10 bulk jobs of a soak, ~6 MB a
# job, while the same 2,000 texts run again and again stayed flat. 240 new shapes of a bf16 encoder
# grew RSS by 194 MB with both caches as torch sets them, 108 / 88 MB with one of them at 8, 0.7 MB
# with both at 8; at 8 the engine ran as fast (CoNLL sentences and whole documents, one process,
# two rounds: docs/benchmarks.md#soak). Both are read when first used, so setting them before the
# first forward pass is enough; an operator's value is kept.
SHAPE_CACHE_CAPACITY = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "8", "LRU_CACHE_CAPACITY": "8"}


def bound_shape_caches() -> None:
    """Cap torch's per-shape kernel caches on CPU before the first forward pass (see above)."""
    for name, capacity in SHAPE_CACHE_CAPACITY.items():
        os.environ.setdefault(name, capacity)


def configure_cpu_threads(requested: int | None) -> int:
    """Set torch's intra-op threads once per process; returns the number used."""
    threads = cpu_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# A CPU pass gets one intra-op thread per this many tokens (engine.py; lanes.py for whole calls).
# Waking a sleeping OpenMP thread at each of a pass's ~100 parallel regions (the default
# OMP_WAIT_POLICY=PASSIVE, where a worker may share the cores) costs a small pass more than a second
# core gives it: on a 2-core KVM guest (AVX2 EPYC), one CoNLL sentence (18 tokens) took 14.9 ms on one
# thread and 19.4 ms on two, 4 sentences (66 tokens) 34.0 ms on either, 8 (135 tokens) 60.0 against
# 58.0 ms but 36% more CPU time, 16 (280 tokens) 111.5 against 95.5 ms (docs/benchmarks.md#predict).
TOKENS_PER_THREAD = 128

# A CPU call runs at most one lane (a pass on a thread of its own, lanes.py) per this many tokens. Lanes
# wake no thread inside a pass, so they pay off far sooner than a second thread in one pass: on a 2-core
# Zen 5 KVM guest, a call of 4 / 8 / 16 CoNLL sentences took fp32 17.1 / 23.9 / 42.7 ms with a lane
# per 32 tokens against 21.3 / 35.0 / 48.7 with one per 128, bf16 9.3 / 13.2 / 19.9 against 10.0 / 15.1
# / 22.0 (best of 2 rounds, one process); a lone sentence is one window, one lane either way.
TOKENS_PER_LANE = 32


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads in the calling thread (None: as set), then
    restore: torch and MKL keep the count per thread, so other threads' passes keep theirs."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pick_process_gpu(index: int | None) -> None:
    """One GPU per worker process (by its pool index) where a machine has several."""
    # CUDA is initialised here, in the child, never in the parent before the fork.
    if index is not None and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(index % torch.cuda.device_count())
