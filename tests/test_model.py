import pytest
import torch

from mip360cli.config import Config, load_config
from mip360cli.core.errors import UserError
from mip360cli.model import losses
from mip360cli.model.fields import NerfMLP, PointEncoding, color_activation, density_activation
from mip360cli.model.model import Mip360, render_rays
from mip360cli.train.step import compute_losses


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
    c = render_rays(model, o, d, vd, chunk="auto")
    for k in ("rgb", "acc", "mean_depth", "median_depth"):
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(c[k], b[k], atol=1e-6, rtol=1e-6)
    assert a["rgb"].shape == (50, 3) and a["median_depth"].shape == (50,)


@pytest.mark.parametrize("preset, cpu", [("tiny", 2048), ("default", 128)])
def test_render_chunk_auto_fits_the_cpu_caches_and_is_8192_on_a_gpu(preset, cpu):
    """render.chunk_rays=auto: on the CPU, the largest activation of a chunk is 8-16 MiB; numbers are kept."""
    from mip360cli.model.model import chunk_rays

    cfg = load_config(preset)
    assert cfg.render.chunk_rays == "auto"
    model = Mip360.from_config(cfg.model, cfg.data)
    assert chunk_rays("auto", model, torch.device("cpu")) == cpu
    assert chunk_rays("auto", model, torch.device("cuda")) == 8192
    assert chunk_rays(300, model, torch.device("cpu")) == 300
    p, n = cfg.model.prop, cfg.model.nerf
    floats = max(max(p.width, model.proposal.encoding.dim) * max(p.samples),
                 max(n.width, model.nerf.encoding.dim) * n.samples)
    assert 8 << 20 < cpu * floats * 4 <= 16 << 20


def test_render_chunk_config_takes_a_number_or_auto():
    assert load_config("tiny", ["render.chunk_rays=512"]).render.chunk_rays == 512
    assert load_config("default", ["render.chunk_rays=auto"]).render.chunk_rays == "auto"
    with pytest.raises(UserError, match="must be an integer or one of 'auto', got 'fast'"):
        load_config("tiny", ["render.chunk_rays=fast"])
    with pytest.raises(UserError, match="render.chunk_rays must be >= 1 or auto, got 0"):
        load_config("tiny", ["render.chunk_rays=0"])


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
    assert (enc.true_dim, enc.dim) == (75, 80)
    nerf = NerfMLP(cfg.encoding, cfg.nerf)
    layers = nerf.trunk.layers
    shapes = [tuple(layer.weight.shape) for i, layer in enumerate(layers) if i != cfg.nerf.skip + 1]
    assert shapes == [(1024, 80)] + [(1024, 1024)] * 6
    skip = layers[cfg.nerf.skip + 1]
    assert tuple(skip.h.weight.shape) == (1024, 1024) and tuple(skip.x.weight.shape) == (1024, 80)
    assert tuple(nerf.head.weight.shape) == (256 + 16, 1024)
    assert tuple(nerf.view_b.weight.shape) == (128, 256) and tuple(nerf.view_d.weight.shape) == (128, 32)
    assert tuple(nerf.rgb.weight.shape) == (16, 128)
    # padding inputs and unused outputs have zero weights; the init uses the true fan-in
    assert (layers[0].weight[:, 75:] == 0).all() and (skip.x.weight[:, 75:] == 0).all()
    assert (nerf.head.weight[257:] == 0).all() and (nerf.rgb.weight[3:] == 0).all()
    assert float(layers[0].weight.abs().max()) <= (6 / 75) ** 0.5
    assert float(skip.h.weight.abs().max()) <= (6 / 1099) ** 0.5 < float(layers[1].weight.abs().max())
    assert all((layer.bias == 0).all() for i, layer in enumerate(layers) if i != cfg.nerf.skip + 1)
    ico = load_config(None, ["model.encoding.basis=icosahedron"]).model.encoding
    assert (PointEncoding(ico).true_dim, PointEncoding(ico).dim) == (504, 512)
    x = torch.rand(4, 3)
    assert PointEncoding(ico)(x).shape == (4, 512) and (PointEncoding(ico)(x)[:, 504:] == 0).all()


def _old_layout_state(cfg, seed: int = 0) -> dict:
    """Random weights in the earlier, unpadded layout (concatenated skip and view inputs, one-output heads)."""
    g = torch.Generator().manual_seed(seed)
    enc = 3 + 6 * cfg.encoding.point_max_freq
    view = 3 + 6 * cfg.encoding.view_max_freq
    p, n = cfg.prop, cfg.nerf
    shapes = {f"proposal.trunk.layers.{i}": (p.width, enc if i == 0 else p.width) for i in range(p.depth)}
    shapes["proposal.density"] = (1, p.width)
    for i in range(n.depth):
        shapes[f"nerf.trunk.layers.{i}"] = (n.width, enc if i == 0 else n.width + (enc if i == n.skip + 1 else 0))
    shapes.update({"nerf.density": (1, n.width), "nerf.bottleneck": (n.bottleneck, n.width),
                   "nerf.view": (n.view_width, n.bottleneck + view), "nerf.rgb": (3, n.view_width)})
    state = {}
    for name, (o, i) in shapes.items():
        state[f"{name}.weight"] = torch.randn(o, i, generator=g) / i ** 0.5
        state[f"{name}.bias"] = torch.randn(o, generator=g) * 0.1
    return state


def _old_forward(state: dict, cfg, x: torch.Tensor, viewdirs: torch.Tensor):
    """The earlier layout's functions, written out: proposal density, NeRF density and color."""
    from mip360cli.model.fields import pos_enc

    def lin(name, h):
        return h @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    enc = pos_enc(x, cfg.encoding.point_max_freq)
    h = enc
    for i in range(cfg.prop.depth):
        h = torch.relu(lin(f"proposal.trunk.layers.{i}", h))
    prop = density_activation(lin("proposal.density", h)[..., 0])
    h = enc
    for i in range(cfg.nerf.depth):
        if i == cfg.nerf.skip + 1:
            h = torch.cat([h, enc], -1)
        h = torch.relu(lin(f"nerf.trunk.layers.{i}", h))
    density = density_activation(lin("nerf.density", h)[..., 0])
    view = pos_enc(viewdirs, cfg.encoding.view_max_freq)[:, None, :].expand(*h.shape[:-1], -1)
    h = torch.relu(lin("nerf.view", torch.cat([lin("nerf.bottleneck", h), view], -1)))
    return prop, density, color_activation(lin("nerf.rgb", h))


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_aligned_layers_are_the_old_function_from_the_same_weights(preset):
    from mip360cli.model.model import load_plain_state

    cfg = load_config(preset)
    model = Mip360.from_config(cfg.model, cfg.data)
    old = _old_layout_state(cfg.model)
    load_plain_state(model, old)  # an old checkpoint's weights, converted
    x = torch.rand(5, 8, 3) * 4 - 2
    vd = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    prop, density, rgb = _old_forward(old, cfg.model, x, vd)
    torch.testing.assert_close(model.proposal(x), prop, rtol=1e-5, atol=1e-5)
    new_density, new_rgb = model.nerf(x, vd)
    torch.testing.assert_close(new_density, density, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_rgb, rgb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset, rays", [("tiny", 64), ("default", 16)])
def test_no_gemm_of_a_training_step_has_an_odd_size(preset, rays):
    """Every matrix multiplied in a step (forward and backward) has dimensions that are multiples of 16."""
    from mip360cli.model.shapes import unaligned_gemms

    cfg = load_config(preset)
    model = Mip360.from_config(cfg.model, cfg.data)
    o = torch.zeros(rays, 3)
    d = torch.nn.functional.normalize(torch.randn(rays, 3), dim=-1)

    def step():
        levels = model(o, d, d, train_frac=0.5, jitter=torch.rand(rays, model.n_levels()))
        compute_losses(levels, torch.rand(rays, 3), cfg)["loss"].backward()

    total, odd = unaligned_gemms(step)
    assert total > 0 and odd == [], odd


def test_activations():
    torch.testing.assert_close(density_activation(torch.tensor([1.0])), torch.log(torch.tensor([2.0])))
    assert color_activation(torch.tensor([-100.0])).item() == pytest.approx(-0.001)
    assert color_activation(torch.tensor([100.0])).item() == pytest.approx(1.001)


def test_heads_run_in_fp32_under_bf16_autocast():
    """sigmoid * 1.002 - 0.001 in bf16 cannot reach 1.001 (1.002 rounds to 1.0); in fp32 it does."""
    cfg = load_config("tiny")
    model = Mip360.from_config(cfg.model, cfg.data)
    with torch.no_grad():
        model.nerf.rgb.bias[:3] = 50.0  # saturate the colors
    model.mlp_dtype = torch.bfloat16  # autocast (CPU autocast runs bf16 too)
    o, d, vd = _rays(16)
    levels = model(o, d, vd)
    rgb = levels[-1].rgb
    assert rgb.dtype == torch.float32 and levels[-1].weights.dtype == torch.float32
    assert float(rgb.max()) == pytest.approx(1.001, abs=1e-6)


def test_recomputing_the_proposal_mlp_gives_the_same_gradients_and_keeps_less(tiny):
    """train.recompute_proposal: the proposal MLP's activations are recomputed in backward, not kept."""
    cfg, _ = tiny
    torch.manual_seed(0)
    o = torch.rand(64, 3) * 0.5
    d = torch.randn(64, 3)
    vd = d / d.norm(dim=-1, keepdim=True)
    gt, jitter = torch.rand(64, 3), torch.rand(64, 3)

    def grads_and_kept(recompute: bool):
        torch.manual_seed(1)
        model = Mip360.from_config(cfg.model, cfg.data)
        model.recompute_proposal = recompute
        kept: dict[int, int] = {}

        def pack(t):
            kept.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = compute_losses(model(o, d, vd, train_frac=torch.tensor(0.3), jitter=jitter), gt, cfg)["loss"]
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}, sum(kept.values())

    plain, kept_plain = grads_and_kept(False)
    recomputed, kept_recomputed = grads_and_kept(True)
    assert plain.keys() == recomputed.keys()
    for k in plain:
        assert torch.allclose(plain[k], recomputed[k], rtol=1e-5, atol=1e-7), k
    assert any(plain[k].abs().max() > 0 for k in plain if k.startswith("proposal."))  # the proposal does learn
    assert kept_recomputed < 0.8 * kept_plain, (kept_recomputed, kept_plain)
