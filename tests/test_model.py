import pytest
import torch

from mip360cli.config import Config, load_config
from mip360cli.model import losses
from mip360cli.model.fields import NerfMLP, PointEncoding, color_activation, density_activation
from mip360cli.model.model import Mip360, render_rays
from mip360cli.train.loop import compute_losses


def _rays(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.5
    d = torch.randn(n, 3, generator=g)
    return o, d, d / d.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    return cfg, Mip360.from_config(cfg.model, cfg.data)


def test_levels_shapes_and_invariants(tiny):
    cfg, model = tiny
    o, d, vd = _rays(64)
    levels = model(o, d, vd, train_frac=0.3, jitter=torch.rand(64, 3))
    assert [lv.s.shape[-1] - 1 for lv in levels] == [*cfg.model.prop.samples, cfg.model.nerf.samples]
    for lv in levels:
        assert (lv.s.diff(dim=-1) >= 0).all() and lv.s.min() >= 0 and lv.s.max() <= 1
        assert not lv.s.requires_grad  # no gradient through the sample positions
        torch.testing.assert_close(lv.weights.sum(-1), torch.ones(64))  # opaque background
    assert levels[-1].rgb.shape == (64, 3) and levels[0].rgb is None
    assert levels[-1].rgb.min() >= -0.001 and levels[-1].rgb.max() <= 1.001


def test_chunked_rendering_equals_unchunked(tiny):
    _, model = tiny
    o, d, vd = _rays(50)
    a = render_rays(model, o, d, vd, chunk=7)
    b = render_rays(model, o, d, vd, chunk=1000)
    for k in ("rgb", "acc", "mean_depth", "median_depth"):
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)
    assert a["rgb"].shape == (50, 3) and a["median_depth"].shape == (50,)


def test_losses_reach_only_the_right_networks(tiny):
    cfg, model = tiny
    o, d, vd = _rays(32)
    gt = torch.rand(32, 3)
    levels = model(o, d, vd, 0.5, torch.rand(32, 3))
    inter = sum(losses.interlevel(levels[-1].s, levels[-1].weights, lv.s, lv.weights).mean() for lv in levels[:-1])
    model.zero_grad()
    inter.backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.nerf.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.proposal.parameters())
    model.zero_grad()
    terms = compute_losses(levels, gt, cfg)
    terms["data"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.proposal.parameters())


def test_paper_sizes():
    cfg = Config().model
    enc = PointEncoding(cfg.encoding)
    assert enc.dim == 75
    nerf = NerfMLP(cfg.encoding, cfg.nerf)
    shapes = [tuple(layer.weight.shape) for layer in nerf.trunk.layers]
    assert shapes == [(1024, 75)] + [(1024, 1024)] * 4 + [(1024, 1024 + 75)] + [(1024, 1024)] * 2
    assert tuple(nerf.bottleneck.weight.shape) == (256, 1024)
    assert tuple(nerf.view.weight.shape) == (128, 256 + 27) and tuple(nerf.rgb.weight.shape) == (3, 128)
    assert all((layer.bias == 0).all() for layer in nerf.trunk.layers)
    ico = load_config(None, ["model.encoding.basis=icosahedron"]).model.encoding
    assert PointEncoding(ico).dim == 504
    x = torch.rand(4, 3)
    assert PointEncoding(ico)(x).shape == (4, 504)


def test_activations():
    torch.testing.assert_close(density_activation(torch.tensor([1.0])), torch.log(torch.tensor([2.0])))
    assert color_activation(torch.tensor([-100.0])).item() == pytest.approx(-0.001)
    assert color_activation(torch.tensor([100.0])).item() == pytest.approx(1.001)
