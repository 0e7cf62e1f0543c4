"""Where and how the model runs: device, dtype, CPU threads and optional int8 quantization."""

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


def prepare_model(model: torch.nn.Module, device: torch.device, quantize: str) -> tuple[torch.nn.Module, str]:
    """Move the model for inference; returns it and a short description of the numeric mode.

    CUDA runs fp16 (half the memory traffic, tensor cores); CPU runs fp32, or int8 dynamic
    quantization of the Linear layers when ``quantize == "int8"`` (weights int8, activations
    quantized on the fly), which is where nearly all of an encoder's FLOPs are.
    """
    model.eval()
    if device.type == "cuda":
        if quantize == "int8":
            log.warning("NER_QUANTIZE=int8 applies to CPU only; running fp16 on CUDA")
        return model.half().to(device), "fp16"
    if quantize == "int8":
        with warnings.catch_warnings():
            # torch marks its quantized tensor types deprecated; the path still works and is opt-in.
            warnings.filterwarnings("ignore", category=UserWarning, module="torch")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return quantized, "int8"
    return model, "fp32"


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
