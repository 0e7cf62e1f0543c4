"""Where and how the model runs: device, numeric precision (fp32, bf16, fp16, int8) and CPU threads."""

from __future__ import annotations

import logging
import os
import warnings

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
    an encoder's FLOPs are; the classifier head stays fp32 (a 384x9 layer: no time, but its
    rounding moves entity boundaries).
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


# Linear layers left in fp32 by int8: the token classifier (see prepare_model).
INT8_KEEP_FP32 = ("classifier",)


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of the encoder's Linear layers, per-channel weights."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith(INT8_KEEP_FP32)
    }
    with warnings.catch_warnings():
        # torch marks its quantized tensor types deprecated; the path still works and is opt-in.
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def configure_cpu_threads(requested: int | None) -> int:
    """Set torch's intra-op threads once per process; returns the number used."""
    threads = cpu_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def pick_process_gpu(index: int | None) -> None:
    """One GPU per worker process (by its pool index) where a machine has several."""
    # CUDA is initialised here, in the child, never in the parent before the fork.
    if index is not None and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(index % torch.cuda.device_count())
