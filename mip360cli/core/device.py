"""Which device a stage runs on, in which precision, compiled or not: the one place of that policy.

``train.precision`` and ``train.compile`` are decided here for training, rendering, evaluation and
the benchmarks alike, so a run renders the way it was trained.
"""

from __future__ import annotations

import torch

from .cpualloc import keep_freed_memory
from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> the device, or a UserError.

    Work on the CPU also keeps freed memory in the process (``cpualloc.keep_freed_memory``).
    """
    device = _parse_device(name)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def _parse_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA GPU visible to PyTorch",
                        hint="use --device cpu, or install a CUDA build of torch")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device type '{device.type}' is not supported", hint="use cpu or cuda")
    return device


def mlp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the MLPs' matmuls run in (autocast), or None for float32.

    ``train.precision``: auto and bf16 mean bf16 on CUDA; on the CPU the MLPs stay in float32
    (bf16 there is ignored, with a warning from the trainer).
    """
    return torch.bfloat16 if device.type == "cuda" and precision in ("auto", "bf16") else None


def compile_enabled(setting: str | bool, device: torch.device) -> bool:
    """``train.compile``: true, false, or auto (CUDA only: on the CPU compiled steps are slower)."""
    return setting is True or (setting == "auto" and device.type == "cuda")
