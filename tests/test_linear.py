"""The MLPs' linear layer: oneDNN on the CPU gives F.linear's function and gradients."""

from __future__ import annotations

import platform

import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mip360cli.model import linear
from mip360cli.model.linear import Linear

needs_onednn = pytest.mark.skipif(not linear._ONEDNN, reason="this torch build has no oneDNN")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 wheels ship oneDNN")
def test_the_onednn_path_is_on_where_the_wheel_has_it():
    """On x86-64 (CI included) the probe finds oneDNN's linear, so the tests below run."""
    assert linear._ONEDNN


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _outputs_and_grads(layer: Linear, x: torch.Tensor, relu: bool, reference: bool):
    layer.zero_grad()
    x = x.detach().requires_grad_()
    if reference:
        y = F.linear(x, layer.weight, layer.bias)
        y = F.relu(y) if relu else y
    else:
        y = layer(x, relu=relu)
    g = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    (y * g).sum().backward()
    grads = [x.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return [y.detach()] + [t.clone() for t in grads]


@needs_onednn
@pytest.mark.parametrize("i, o, bias, relu", [(80, 64, True, True), (128, 16, True, False), (32, 128, False, True),
                                              (512, 512, True, True)])  # 512x512: the weight's gradient in oneDNN
def test_onednn_linear_is_f_linear_with_its_gradients(i, o, bias, relu):
    torch.manual_seed(0)
    layer = Linear(i, o, bias=bias)
    with torch.no_grad():
        if bias:
            layer.bias.uniform_(-0.5, 0.5)
    base = torch.randn(6, 40, i + 16)
    x = base[..., 8:8 + i]  # not contiguous, as the view branch's slice of the head's output
    with _Ops() as ops:
        got = _outputs_and_grads(layer, x, relu, reference=False)
    assert "_linear_pointwise" in ops.names  # the oneDNN path ran (forward and backward)
    assert ops.names.count("_linear_pointwise") == 2 + (i * o >= linear._ONEDNN_WEIGHT_GRAD)
    want = _outputs_and_grads(layer, x, relu, reference=True)
    assert got[0].shape == (6, 40, o)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if relu:
        assert (got[0] == 0).any() and (got[0] > 0).any()  # the ReLU's mask mattered


@needs_onednn
def test_other_inputs_take_f_linear():
    """float64 (gradcheck), oneDNN switched off and torch.compile's tracing use F.linear."""
    torch.manual_seed(0)
    layer = Linear(16, 16)
    with _Ops() as ops:
        layer.double()(torch.randn(4, 16, dtype=torch.float64), relu=True)
        layer.float()
        with torch.backends.mkldnn.flags(enabled=False):
            layer(torch.randn(4, 16), relu=True)
    assert "_linear_pointwise" not in ops.names and "addmm" in ops.names
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    layer.double()
    assert torch.autograd.gradcheck(lambda t: layer(t, relu=True), (x,))


@needs_onednn
def test_without_gradients_the_layer_keeps_nothing():
    """Rendering (no_grad) calls oneDNN directly and returns a tensor without a graph."""
    torch.manual_seed(0)
    layer = Linear(32, 64)
    x = torch.randn(10, 32)
    with torch.no_grad(), _Ops() as ops:
        y = layer(x, relu=True)
    assert ops.names == ["_linear_pointwise"] and y.grad_fn is None
    torch.testing.assert_close(y, F.relu(F.linear(x, layer.weight, layer.bias)), rtol=1e-5, atol=1e-5)
