"""The MLPs' linear layer: ``F.linear`` on GPUs, oneDNN's matmul for fp32 on the CPU.

On the CPU, ``torch.mm``/``addmm`` run in MKL, which on some CPUs (AMD's, among
them the project's 2-core EPYC machines) takes its AVX2 path and reaches about
half of what the cores do: the NeRF MLP's (8192, 128) @ (128, 128) runs at
0.19-0.21 TFLOP/s there against 0.37-0.47 TFLOP/s in oneDNN, the library PyTorch ships
for its own CPU kernels. ``benchmarks/train_step.py`` prints both rates.
``Linear`` uses oneDNN for the forward matmul (with the ReLU fused into it when
asked) and for the input's gradient, and for the weight's gradient when the
weight is large (small weights with a long reduction are faster in MKL). The
function is the same as ``relu(F.linear(x, W, b))`` up to summation order.

Everything else (CUDA, bf16, float64 as in gradcheck, autocast, tracing by
``torch.compile``, ``torch.backends.mkldnn.flags(enabled=False)``) takes
``F.linear``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


def _has_onednn() -> bool:
    """Whether oneDNN's linear is there and computes what F.linear does (the op is internal to PyTorch,
    used by its compiler: a build without it, or one where it changed, falls back to F.linear)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.arange(32.0).reshape(2, 16) / 8 - 2
        w = torch.linspace(-1, 1, 48).reshape(3, 16)
        b = torch.tensor([0.5, -0.5, 0.0])
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
    except (AttributeError, RuntimeError, TypeError):
        return False
    return y.shape == (2, 3) and bool(torch.allclose(y, F.relu(F.linear(x, w, b)), atol=1e-5))


_ONEDNN = _has_onednn()
# Weights with at least this many entries get their gradient from oneDNN too (measured: 1024x1024 and
# 1024x256 are 1.2-1.7x faster there; 128x128 and 64x64, reduced over 8-16k rows, 1.3-1.7x slower).
_ONEDNN_WEIGHT_GRAD = 1 << 18


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False) -> torch.Tensor:
    """``x @ weight.T + bias`` (then ReLU) in oneDNN, no autograd.

    Args:
        x: (..., in); weight: (out, in), any strides; bias: (out,) or None.
    Returns:
        (..., out).
    """
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``Linear`` takes the oneDNN path for this input (fp32 on the CPU, eager)."""
    if torch.compiler.is_compiling():  # inductor picks its own kernels for F.linear
        return False
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu"))


class _OneDNNLinear(torch.autograd.Function):
    """Linear (+ ReLU) with oneDNN matmuls forward and backward; see the module's docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
        y = onednn_linear(x, weight, bias, relu)
        ctx.relu = relu
        ctx.has_bias = bias is not None
        # with the ReLU, its output tells where the gradient passes (y > 0 exactly where x @ W.T + b > 0)
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, y = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad, weight.t(), None)  # grad @ W
        g2 = grad.reshape(-1, grad.shape[-1])  # (M, out)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])  # (M, in)
            grad_w = onednn_linear(g2.t(), x2.t(), None) if weight.numel() >= _ONEDNN_WEIGHT_GRAD \
                else g2.t() @ x2
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, None


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose forward can fuse a ReLU.

    ``forward(x, relu=False)``: x (..., in_features) -> (..., out_features).
    """

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if uses_onednn(x, self.weight):
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _OneDNNLinear.apply(x, self.weight, self.bias, relu)
            return onednn_linear(x, self.weight, self.bias, relu)  # rendering: nothing to keep for backward
        y = F.linear(x, self.weight, self.bias)
        return F.relu(y) if relu else y
