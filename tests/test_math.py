"""The pure math against the reference values of docs/algorithm.md, brute-force versions and gradcheck."""

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from mip360cli.model import coord, losses, render, stepfun
from mip360cli.train.schedule import learning_rate

T = torch.tensor


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=tol, rtol=0)


# ----------------------------------------------------------------------------- coord


def test_contract_references():
    close(coord.contract(T([[0.5, 0, 0], [2, 0, 0], [3, 4, 0]])), [[0.5, 0, 0], [1.5, 0, 0], [1.08, 1.44, 0]])
    far = coord.contract(torch.randn(1000, 3, generator=torch.Generator().manual_seed(0)) * 1e6)
    assert (far.norm(dim=-1) <= 2).all() and (far.norm(dim=-1) > 1.99).all()  # float32 may round to 2


def test_contract_gradcheck():
    x = (torch.randn(20, 3, dtype=torch.float64) * 2).requires_grad_()
    assert gradcheck(coord.contract, (x,))


def test_disparity_warp_references():
    close(coord.s_to_t(T([0.0, 0.5, 1.0]), 0.2, 1e6), [0.2, 0.3999999, 1e6], tol=1e-4)
    close(coord.t_to_s(T(1.0, dtype=torch.float64), 0.2, 1e6), 0.80000016, tol=1e-7)
    s = torch.rand(100, dtype=torch.float64)
    close(coord.t_to_s(coord.s_to_t(s, 0.2, 1e6), 0.2, 1e6), s, tol=1e-9)


# ----------------------------------------------------------------------------- stepfun


def test_sample_intervals_references():
    close(stepfun.sample_intervals(T([0.0, 1.0]), T([0.0]), 4), [0, 0.25, 0.5, 0.75, 1])
    close(stepfun.sample_intervals(T([0.0, 0.5, 1.0]), torch.log(T([0.25, 0.75])), 4),
          [0.0833333, 0.4166667, 0.6666667, 0.8333333, 1.0])


def test_single_jitter_sampling_stays_sorted_in_domain():
    t = torch.sort(torch.rand(50, 9), dim=-1).values
    t[:, 0], t[:, -1] = 0, 1
    logits = torch.log(torch.rand(50, 8))
    jitter = torch.rand(50, 1)
    s = stepfun.sample_intervals(t, logits, 16, jitter)
    assert s.shape == (50, 17) and (s.diff(dim=-1) >= 0).all() and s.min() >= 0 and s.max() <= 1
    # jitter 0 is the un-jittered grid linspace(0, 1 - u_max, n); a jitter shifts all samples up
    a = stepfun.sample(T([0.0, 1.0]), T([0.0]), 4, jitter=T([0.0]))
    b = stepfun.sample(T([0.0, 1.0]), T([0.0]), 4, jitter=T([0.5]))
    close(a, [0, 0.25, 0.5, 0.75], tol=1e-6)
    d = (b - a).numpy()
    assert np.allclose(d, d[0]) and d[0] > 0


def test_max_dilate_box():
    t, w = stepfun.max_dilate_weights(T([0.0, 0.4, 0.5, 1.0]), T([0.0, 1.0, 0.0]), 0.05, domain=(0.0, 1.0))
    mass = w > 1e-5
    assert t[:-1][mass].min().item() == pytest.approx(0.35) and t[1:][mass].max().item() == pytest.approx(0.55)
    close(w.sum(), 1.0)
    pdf = stepfun.weight_to_pdf(t, w)[mass]
    close(pdf, torch.full_like(pdf, 5.0), tol=1e-4)  # mass 1 spread evenly over a width of 0.2


def test_max_dilate_equals_bruteforce():
    g = torch.Generator().manual_seed(0)
    for n, d in ((1, 0.1), (5, 0.01), (17, 0.05), (64, 0.0103125), (33, 0.3)):
        t = torch.sort(torch.rand(40, n + 1, generator=g), dim=-1).values
        t[:, 0], t[:, -1] = 0, 1
        t[:5, 3 % (n + 1)] = t[:5, 2 % (n + 1)]  # some zero-width intervals
        t = torch.sort(t, dim=-1).values
        w = torch.rand(40, n, generator=g)
        w[:, ::3] = 0
        fast = stepfun.max_dilate(t, w, d, (0.0, 1.0))
        slow = stepfun.max_dilate_bruteforce(t, w, d, (0.0, 1.0))
        torch.testing.assert_close(fast[0], slow[0])
        torch.testing.assert_close(fast[1], slow[1])


def test_dilation_numbers_of_the_paper():
    from mip360cli.config import Config
    from mip360cli.model.model import Mip360, dilations

    cfg = Config()
    model = Mip360.from_config(cfg.model, cfg.data)  # the schedule the model uses, from the paper's config
    got = dilations(model.samples, cfg.model.dilation_bias, cfg.model.dilation_multiplier)
    assert got == pytest.approx([0.0103125, 0.0026221], abs=1e-7)


def test_anneal():
    t, w = T([0.0, 0.5, 0.5, 1.0]), T([0.2, 0.5, 0.3])
    logits = stepfun.anneal_weights(t, w, train_frac=0.5, slope=10)
    a = 10 * 0.5 / (9 * 0.5 + 1)
    close(logits[[0, 2]], [a * math.log(0.2), a * math.log(0.3)])
    assert logits[1] == -float("inf")  # zero-width interval never sampled
    close(stepfun.anneal_weights(t, w, 1.0)[[0, 2]], torch.log(w[[0, 2]]))  # a = 1 at the end
    close(stepfun.anneal_weights(t, w, 0.0)[[0, 2]], [0, 0])                # a = 0 at the start: uniform


def outer_bruteforce(t, t_env, w_env):
    out = np.zeros(len(t) - 1)
    for i in range(len(t) - 1):
        for j in range(len(w_env)):
            if t_env[j + 1] > t[i] and t_env[j] <= t[i + 1]:
                out[i] += w_env[j]
    return out


def test_outer_measure_reference_and_bruteforce():
    close(stepfun.outer_measure(T([0, 0.25, 0.5, 0.75, 1]), T([0, 0.4, 1.0]), T([0.1, 0.2])), [0.1, 0.3, 0.2, 0.2])
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = np.sort(np.r_[0, rng.random(7), 1])
        te = np.sort(np.r_[0, rng.random(11), 1])
        we = rng.random(12)
        close(stepfun.outer_measure(T(t), T(te), T(we)), outer_bruteforce(t, te, we), tol=1e-6)


def test_outer_measure_bounds_monte_carlo():
    # The outer measure is at least the envelope mass inside each query interval (Monte Carlo).
    rng = np.random.default_rng(1)
    te = np.sort(np.r_[0, rng.random(9), 1])
    we = rng.random(10)
    t = np.sort(np.r_[0, rng.random(5), 1])
    x = rng.random(200_000)
    pdf = we / np.diff(te)
    mass_density = pdf[np.searchsorted(te, x, side="right") - 1]
    inside = np.array([(mass_density * ((x >= a) & (x < b))).mean() for a, b in zip(t[:-1], t[1:])])
    outer = stepfun.outer_measure(T(t), T(te), T(we)).numpy()
    assert (outer >= inside - 0.01).all()


# ----------------------------------------------------------------------------- losses


def test_interlevel_reference_and_gradcheck():
    loss = losses.interlevel(T([[0, 0.25, 0.5, 0.75, 1]]), T([[0.1, 0.6, 0.2, 0.1]]), T([[0, 0.4, 1.0]]),
                             T([[0.1, 0.2]]))
    close(loss, [[0, 0.15, 0, 0]])
    s = T([[0, 0.25, 0.5, 0.75, 1]], dtype=torch.float64)
    w = T([[0.1, 0.6, 0.2, 0.1]], dtype=torch.float64)
    wp = T([[0.1, 0.2]], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda p: losses.interlevel(s, w, T([[0, 0.4, 1.0]], dtype=torch.float64), p), (wp,))


def test_distortion_references_bruteforce_and_gradcheck():
    close(losses.distortion(T([[0, 0.5, 1]]), T([[0.5, 0.5]])), [1 / 3])
    close(losses.distortion(T([[0, 0.1, 0.3, 1]]), T([[0.2, 0.5, 0.3]])), [0.276])
    s = torch.sort(torch.rand(30, 17, dtype=torch.float64), dim=-1).values
    w = torch.rand(30, 16, dtype=torch.float64)
    close(losses.distortion(s, w), losses.distortion_bruteforce(s, w), tol=1e-12)
    w.requires_grad_()
    s.requires_grad_()
    assert gradcheck(losses.distortion, (s, w))


def test_charbonnier_and_psnr():
    close(losses.charbonnier(T([[0.5, 0.5, 0.5]]), T([[0.5, 0.5, 0.5]])), 1e-3)
    close(losses.charbonnier(T([[0.3]]), T([[0.0]])), math.sqrt(0.09 + 1e-6))
    assert losses.mse_to_psnr(0.01) == pytest.approx(20.0)
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a: losses.charbonnier(a, torch.zeros(5, 3, dtype=torch.float64)), (x,))


# ----------------------------------------------------------------------------- render


def test_alpha_weights_and_composite_references():
    sigma, t, d = T([[1.0, 2, 4]]), T([[0.0, 0.5, 1, 1.5]]), T([[0.0, 0, 1]])
    w = render.alpha_weights(sigma, t, d, opaque_background=False)
    close(w, [[0.3934693, 0.3834005, 0.1929328]])
    close(w.sum(), 0.9698026)
    rgb = render.composite(w, T([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]]), background=1.0)
    close(rgb, [[0.4236667, 0.4135979, 0.2231302]])
    close(render.alpha_weights(sigma, t, d, opaque_background=True), [[0.3934693, 0.3834005, 0.2231302]])
    # distances scale with |d|
    close(render.alpha_weights(sigma / 2, t, d * 2, False), w)


def test_alpha_weights_gradcheck():
    sigma = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.sort(torch.rand(4, 7, dtype=torch.float64), dim=-1).values
    d = torch.randn(4, 3, dtype=torch.float64)
    assert gradcheck(lambda s: render.alpha_weights(s, t, d, False), (sigma,))
    assert gradcheck(lambda s: render.composite(render.alpha_weights(s, t, d, True), torch.ones(4, 6, 3,
                                                dtype=torch.float64) * 0.5), (sigma,))


def test_depth_references():
    w, t = T([[0.1, 0.3, 0.4]]), T([[1.0, 2, 3, 4]])
    close(render.mean_depth(w, t, 0.2, 100), [2.875])
    close(render.median_depth(w, t, 0.2, 100), [3.25])
    # clipping to [near, far]
    close(render.median_depth(T([[1.0]]), T([[0.01, 0.02]]), 0.2, 100), [0.2])


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("step, lr", [(0, 2e-5), (256, 1.4133906e-3), (125_000, 2e-4), (250_000, 2e-5)])
def test_learning_rate_references(step, lr):
    assert learning_rate(step, 2e-3, 2e-5, 250_000, 512, 0.01) == pytest.approx(lr, rel=1e-6)
