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


BF16_CAPABILITY = (8, 0)
"""The CUDA compute capability from which GPUs compute bf16 natively (Ampere: A100, RTX 30xx, and newer)."""


def gpu_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device."""
    return tuple(torch.cuda.get_device_capability(device))


def mlp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the MLPs' matmuls run in (autocast), or None for float32.

    ``train.precision``: ``auto`` means bf16 on a CUDA GPU that computes it natively (compute capability
    8.0 or newer), float32 on older GPUs (a V100 or T4 emulates bf16, slower than float32) and on the CPU;
    ``bf16`` forces bf16 on any GPU; on the CPU the MLPs stay in float32 (bf16 there is ignored, with a
    warning from the trainer).
    """
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or gpu_capability(device) >= BF16_CAPABILITY:
        return torch.bfloat16
    return None


def precision_line(precision: str, device: torch.device) -> str:
    """What ``train.precision`` means on ``device``, for the user: which precision and why."""
    if device.type != "cuda":
        return "precision: fp32 (the CPU)"
    major, minor = gpu_capability(device)
    name = torch.cuda.get_device_name(device)
    where = f"{name}, compute capability {major}.{minor}"
    native = (major, minor) >= BF16_CAPABILITY
    if mlp_dtype(precision, device) is None:
        if precision == "fp32":
            return f"precision: fp32 ({where}; train.precision=fp32)"
        return (f"precision: fp32 ({where}: no native bf16, which needs {BF16_CAPABILITY[0]}.{BF16_CAPABILITY[1]}; "
                "train.precision=bf16 forces it, emulated and slower)")
    if not native:
        return f"precision: bf16 matmuls, emulated ({where}: no native bf16; train.precision=auto uses fp32 here)"
    return f"precision: bf16 matmuls, heads and compositing in fp32 ({where})"


def compile_enabled(setting: str | bool, device: torch.device) -> bool:
    """``train.compile``: true, false, or auto (CUDA only: on the CPU compiled steps are slower)."""
    return setting is True or (setting == "auto" and device.type == "cuda")
