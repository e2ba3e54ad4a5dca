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


# ----------------------------------------------------------------------------- integrated encoding (gaussians)
# Reference values: multinerf's own functions (internal/render.py cast_rays with its conical frustums,
# internal/coord.py track_linearize(contract), lift_and_diagonalize with the identity basis and
# integrated_pos_enc(0, 3)) run in JAX (float64) on these inputs.

IPE_T = [[0.5, 0.9, 2.0, 7.5]]
IPE_RAY = ([[0.3, -0.2, 0.1]], [[0.6, 0.3, 1.0]], [0.01])
MULTINERF_FRUSTUM_MEAN = [[0.742251655629139, 0.02112582781456951, 0.8370860927152317],
                          [1.2496293494704993, 0.2748146747352496, 1.6827155824508322],
                          [3.7228405315614617, 1.511420265780731, 5.804734219269103]]
MULTINERF_FRUSTUM_COV_DIAG = [[0.0044170259295493695, 0.0011146727903343621, 0.012244825963244202],
                              [0.031336862934842086, 0.007882813861547133, 0.08693164592339309],
                              [0.6529611749077711, 0.1638844683531886, 1.8122541089630775]]
MULTINERF_FRUSTUM_COV_XZ = [0.007338562531588906, 0.05212010905176656, 1.0868371256768496]
MULTINERF_CONTRACTED_MEAN = [[0.7338609552972095, 0.020887013270860955, 0.8276233471588802],
                             [0.9026452626580929, 0.19850699278454637, 1.21547661276025],
                             [0.9799815389390785, 0.39785855598339875, 1.5280086066285894]]
MULTINERF_CONTRACTED_COV = [
    [[0.0024666421309733084, 0.0016026659459868412, 0.0045183094976702955],
     [0.0016026659459868425, 0.0010598389903085773, 0.00295102971784165],
     [0.004518309497670297, 0.002951029717841648, 0.008334806265178164]],
    [[0.0006183075048654136, 0.001001361611301497, 0.001784578492638776],
     [0.0010013616113014939, 0.0017259497420399148, 0.0030306047194184208],
     [0.0017845784926387729, 0.0030306047194184225, 0.005451895423223869]],
    [[6.776373323636939e-05, 0.00010267555220563255, 0.00012637738966087236],
     [0.00010267555220564144, 0.0005409087463951804, 0.0006626180138697528],
     [0.00012637738966088125, 0.000662618013869748, 0.0009552064501264328]]]
MULTINERF_IPE_FIRST = [0.6689162449700689, 0.020874429884973025, 0.7332631636918373, 0.9897975170441742,
                       0.04167344985959998, 0.9799636581547145, 0.2006921832173852, 0.08274632398228289,
                       -0.15725577499770146, 0.7416788083436824, 0.9992522107144182, 0.6738137463009901,
                       0.10238565146976127, 0.9970120064473208, -0.08295559427333436, -0.9597004854804089,
                       0.9880984717483343, -0.9221839921541856]


def _ipe_inputs():
    o, d, r = (torch.tensor(x, dtype=torch.float64) for x in IPE_RAY)
    return o, d, r, torch.tensor(IPE_T, dtype=torch.float64)


def test_frustum_gaussians_match_multinerf():
    from mip360cli.model.gaussians import frustum_gaussians

    mean, cov = frustum_gaussians(*_ipe_inputs())
    close(mean[0], MULTINERF_FRUSTUM_MEAN, tol=1e-12)
    close(torch.diagonal(cov[0], dim1=-2, dim2=-1), MULTINERF_FRUSTUM_COV_DIAG, tol=1e-12)
    close(cov[0, :, 0, 2], MULTINERF_FRUSTUM_COV_XZ, tol=1e-12)


def test_frustum_moments_are_the_frustum_integrals():
    """Against the closed-form integrals (mip-NeRF eqs. 37-39) and a Monte Carlo sample of the frustum."""
    from mip360cli.model.gaussians import frustum_moments

    t0, t1 = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64), torch.tensor([0.9, 1.001, 30.0], dtype=torch.float64)
    t_mean, t_var, r_var = frustum_moments(t0, t1)
    den = t1 ** 3 - t0 ** 3
    ref_mean = 0.75 * (t1 ** 4 - t0 ** 4) / den
    close(t_mean, ref_mean, tol=1e-9)
    close(t_var, 0.6 * (t1 ** 5 - t0 ** 5) / den - ref_mean ** 2, tol=1e-6)
    close(r_var, 0.15 * (t1 ** 5 - t0 ** 5) / den, tol=1e-9)
    # Monte Carlo: points uniform in the frustum of a cone of radius 1 at distance 1 (density ~ t^2)
    g = np.random.default_rng(0)
    u = g.random(400_000)
    t = (0.5 ** 3 + u * (0.9 ** 3 - 0.5 ** 3)) ** (1 / 3)
    rad = t * np.sqrt(g.random(len(t)))
    x = rad * np.cos(2 * np.pi * g.random(len(t)))
    close([t.mean(), t.var(), x.var()], [float(t_mean[0]), float(t_var[0]), float(r_var[0])], tol=2e-3)


def test_contract_gaussians_match_multinerf_and_autograd():
    from mip360cli.model.gaussians import contract_gaussians, frustum_gaussians

    mean, cov = frustum_gaussians(*_ipe_inputs())
    cm, cc = contract_gaussians(mean, cov)
    close(cm[0], MULTINERF_CONTRACTED_MEAN, tol=1e-12)
    close(cc[0], MULTINERF_CONTRACTED_COV, tol=1e-12)
    close(cm, coord.contract(mean), tol=1e-12)  # the mean is the contracted point
    for x in (torch.tensor([0.3, 0.2, -0.4], dtype=torch.float64), torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)):
        J = torch.autograd.functional.jacobian(coord.contract, x)
        S = torch.tensor([[0.2, 0.05, 0.0], [0.05, 0.1, 0.02], [0.0, 0.02, 0.3]], dtype=torch.float64)
        close(contract_gaussians(x, S)[1], J @ S @ J.T, tol=1e-12)
    x = (torch.randn(6, 3, dtype=torch.float64) * 2).requires_grad_()
    s = (torch.eye(3, dtype=torch.float64) * 0.1).expand(6, 3, 3).clone().requires_grad_()
    assert gradcheck(contract_gaussians, (x, s))


def test_integrated_pos_enc_matches_multinerf_and_monte_carlo():
    from mip360cli.model.fields import pos_enc
    from mip360cli.model.gaussians import contract_gaussians, frustum_gaussians, integrated_pos_enc, project_gaussians

    cm, cc = contract_gaussians(*frustum_gaussians(*_ipe_inputs()))
    enc = integrated_pos_enc(*project_gaussians(cm, cc, None), 3)
    close(enc[0, 0], MULTINERF_IPE_FIRST, tol=1e-12)
    # no variance: the plain encoding; a variance: the mean of the sinusoids over the Gaussian
    x = torch.tensor([[0.3, -1.2, 0.7]], dtype=torch.float64)
    close(integrated_pos_enc(x, torch.zeros_like(x), 4), pos_enc(x, 4, append_identity=False), tol=1e-12)
    samples = np.random.default_rng(1).normal(0.4, 0.3, 1_000_000)
    mc = [np.sin(2 ** k * samples).mean() for k in range(3)] + [np.cos(2 ** k * samples).mean() for k in range(3)]
    close(integrated_pos_enc(torch.tensor([[0.4]], dtype=torch.float64), torch.tensor([[0.09]], dtype=torch.float64),
                             3)[0], mc, tol=2e-3)
    m = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    v = (torch.rand(5, 3, dtype=torch.float64) * 0.1).requires_grad_()
    assert gradcheck(lambda a, b: integrated_pos_enc(a, b, 3), (m, v))


def test_projected_variances_along_a_basis():
    from mip360cli.model.fields import icosahedron_basis
    from mip360cli.model.gaussians import project_gaussians

    basis = torch.tensor(icosahedron_basis(), dtype=torch.float64).T
    cov = torch.tensor([[0.2, 0.05, 0.0], [0.05, 0.1, 0.02], [0.0, 0.02, 0.3]], dtype=torch.float64)
    mean = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    m, v = project_gaussians(mean, cov, basis)
    close(m, mean @ basis, tol=1e-12)
    close(v, [float(b @ cov @ b) for b in basis.T], tol=1e-12)


# ----------------------------------------------------------------------------- pose corrections


def test_so3_exp_rodrigues_series_and_gradient_at_zero():
    from mip360cli.model.per_image import so3_exp

    w = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)
    R = so3_exp(w)
    close(R @ R.T, torch.eye(3), tol=1e-12)
    close(torch.linalg.det(R), 1.0, tol=1e-12)
    close(R @ w, w, tol=1e-12)  # the axis is kept
    tiny = torch.tensor([1e-5, 0, 0], dtype=torch.float64)
    close(so3_exp(tiny), [[1, 0, 0], [0, 1, -1e-5], [0, 1e-5, 1]], tol=1e-9)
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    so3_exp(z)[1, 2].backward()
    close(z.grad, [-1.0, 0.0, 0.0], tol=1e-12)  # d R / d w at 0 is the cross-product matrix
    assert gradcheck(so3_exp, (torch.randn(4, 3, dtype=torch.float64, requires_grad=True),))


def test_correct_poses_in_the_camera_frame():
    from mip360cli.model.per_image import correct_poses

    c2w = torch.tensor([[[0.0, -1, 0, 2], [1, 0, 0, 3], [0, 0, 1, 4]]], dtype=torch.float64)
    moved = correct_poses(c2w, torch.tensor([[0.0, 0, 1, 0, 0, 0]], dtype=torch.float64))
    close(moved[0, :, 3], [2, 3, 5], tol=1e-12)  # one unit along the camera's own z
    turned = correct_poses(c2w, torch.tensor([[0.0, 0, 0, 0, 0, math.pi / 2]], dtype=torch.float64))
    close(turned[0, :, 3], [2, 3, 4], tol=1e-12)
    close(turned[0, :, :3], c2w[0, :, :3] @ torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64),
          tol=1e-12)
    close(correct_poses(c2w, torch.zeros(1, 6, dtype=torch.float64)), c2w, tol=0)
