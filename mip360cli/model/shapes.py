"""Counting the matrix multiplications of a step by shape (on any device, the CPU included)."""

from __future__ import annotations

from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode

_GEMMS = {"mm", "addmm", "bmm", "baddbmm"}
_ONEDNN = "_linear_pointwise"  # oneDNN's x @ W.T (+ b), the MLPs' matmul on the CPU (model/linear.py)


class GemmShapes(TorchDispatchMode):
    """Records the (m, k, n) of every matrix multiplication run under it (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _GEMMS:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            self.shapes.append((int(a.shape[-2]), int(a.shape[-1]), int(b.shape[-1])))
        elif name == _ONEDNN:
            x, w = args[0], args[1]  # x (..., k), w (n, k)
            self.shapes.append((x.numel() // int(x.shape[-1]), int(x.shape[-1]), int(w.shape[0])))
        return func(*args, **(kwargs or {}))


def unaligned_gemms(step: Callable[[], None], multiple: int = 16) -> tuple[int, list[tuple[int, int, int]]]:
    """Run ``step`` and return (how many GEMMs ran, those with a dimension not a multiple of ``multiple``)."""
    with GemmShapes() as mode:
        step()
    return len(mode.shapes), [s for s in mode.shapes if any(d % multiple for d in s)]
