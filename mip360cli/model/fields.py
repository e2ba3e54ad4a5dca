"""Positional encodings and the proposal / NeRF MLPs (docs/algorithm.md §4)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import EncodingConfig, NerfConfig, ProposalConfig
from .gaussians import integrated_pos_enc, project_gaussians
from .linear import Linear


def pos_enc(x: torch.Tensor, n_freqs: int, append_identity: bool = True) -> torch.Tensor:
    """``[x, sin(2^k x), sin(2^k x + pi/2)]`` for k < n_freqs.

    Args:
        x: (..., D).
    Returns:
        (..., D * 2 * n_freqs (+ D)).
    """
    scales = 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)
    scaled = (x[..., None, :] * scales[:, None]).flatten(-2)
    feats = torch.sin(torch.cat([scaled, scaled + 0.5 * math.pi], dim=-1))
    return torch.cat([x, feats], dim=-1) if append_identity else feats


def icosahedron_basis(tessellation: int = 2) -> np.ndarray:
    """Unit directions of a tessellated icosahedron, one of each antipodal pair.

    Tessellation 2 gives the 21 directions multinerf projects points onto.
    Returns (21, 3) float64.
    """
    a = (1 + math.sqrt(5)) / 2
    verts = np.array([(-1, a, 0), (1, a, 0), (-1, -a, 0), (1, -a, 0), (0, -1, a), (0, 1, a),
                      (0, -1, -a), (0, 1, -a), (a, 0, -1), (a, 0, 1), (-a, 0, -1), (-a, 0, 1)], float)
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    points = []
    for f in faces:
        for i, j in itertools.product(range(tessellation + 1), repeat=2):
            k = tessellation - i - j
            if k < 0:
                continue
            p = (i * verts[f[0]] + j * verts[f[1]] + k * verts[f[2]]) / tessellation
            points.append(p / np.linalg.norm(p))
    points = np.array(points)
    unique: list[np.ndarray] = []
    for p in points:
        if not any(np.abs(p - q).max() < 1e-8 or np.abs(p + q).max() < 1e-8 for q in unique):
            unique.append(p)
    return np.array(unique)


# Every matrix the MLPs multiply has dimensions that are multiples of this, so that GPUs take their fast
# tensor-core kernels (Hopper falls back to slow ones for odd sizes such as 75, 1099 or 283): encodings are
# padded with zero features, heads with unused outputs. Initialization uses the true fan-in, so the model is
# the same function with the same init distribution as without padding (docs/algorithm.md §4).
ALIGN = 16


def padded(n: int, multiple: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


class PointEncoding(nn.Module):
    """Encoding of contracted points: xyz (PE + identity, 75 features) or icosahedron (504).

    ``true_dim`` features, zero-padded to ``dim`` (a multiple of 16: 80, 512).
    """

    def __init__(self, cfg: EncodingConfig):
        super().__init__()
        self.n_freqs = cfg.point_max_freq
        self.basis_name = cfg.basis
        if cfg.basis == "icosahedron":
            self.register_buffer("basis", torch.tensor(icosahedron_basis(), dtype=torch.float32).T, persistent=False)
            self.true_dim = self.basis.shape[1] * 2 * self.n_freqs
        else:
            self.basis = None
            self.true_dim = 3 + 3 * 2 * self.n_freqs
        self.dim = padded(self.true_dim)

    def forward(self, x: torch.Tensor, cov: torch.Tensor | None = None) -> torch.Tensor:
        """(..., 3) contracted points -> (..., dim), the last ``dim - true_dim`` features zero.

        ``cov``: (..., 3, 3) covariances of contracted Gaussians around ``x``: the integrated encoding
        (each frequency damped by the variance along its direction); None: the points' encoding.
        """
        if cov is not None:
            mean, var = project_gaussians(x, cov, self.basis)
            enc = integrated_pos_enc(mean, var, self.n_freqs)
            enc = enc if self.basis is not None else torch.cat([x, enc], -1)
        elif self.basis is not None:
            enc = pos_enc(x @ self.basis, self.n_freqs, append_identity=False)
        else:
            enc = pos_enc(x, self.n_freqs)
        return F.pad(enc, (0, self.dim - self.true_dim))


def view_encoding(viewdirs: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """(..., 3) unit directions -> (..., padded(27)) PE plus identity, zero-padded."""
    enc = pos_enc(viewdirs, n_freqs)
    return F.pad(enc, (0, padded(enc.shape[-1]) - enc.shape[-1]))


def _linear(i: int, o: int, fan_in: int | None = None, used_in: int | None = None, used_out: int | None = None,
            bias: bool = True) -> Linear:
    """He-uniform linear layer (``sqrt(6 / fan_in)``), zero bias.

    ``fan_in``: the true fan-in when the layer is one part of a split layer or its
    input is padded; weights of padding inputs (columns ``used_in:``) and of unused
    outputs (rows ``used_out:``) are zero.
    """
    layer = Linear(i, o, bias=bias)
    bound = math.sqrt(6.0 / (fan_in or used_in or i))
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:used_out, :used_in].uniform_(-bound, bound)
        if bias:
            layer.bias.zero_()
    return layer


def density_activation(raw: torch.Tensor) -> torch.Tensor:
    """``softplus(raw - 1)``."""
    return F.softplus(raw - 1)


def color_activation(raw: torch.Tensor) -> torch.Tensor:
    """``sigmoid(raw) * 1.002 - 0.001``: colors can reach exactly 0 and 1."""
    return torch.sigmoid(raw) * 1.002 - 0.001


class SkipLinear(nn.Module):
    """The layer after the skip: ``h @ W_h + x @ W_x + b`` instead of a layer on ``concat(h, x)``.

    The same function as one layer of ``width + true_in`` inputs (its weight split in two),
    without the concatenation's copy or its odd width.
    """

    def __init__(self, width: int, in_dim: int, true_in: int):
        super().__init__()
        fan_in = width + true_in
        self.h = _linear(width, width, fan_in=fan_in)
        self.x = _linear(in_dim, width, fan_in=fan_in, used_in=true_in, bias=False)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.h(h) + self.x(x)


class Trunk(nn.Module):
    """ReLU MLP of ``depth`` layers of ``width``; the input joins again after layer ``skip``.

    ``in_dim``: the (padded) input width; ``true_in``: its real features, for the init.
    """

    def __init__(self, in_dim: int, width: int, depth: int, skip: int | None = None, true_in: int | None = None):
        super().__init__()
        true_in = true_in or in_dim
        self.skip = skip
        layers: list[nn.Module] = []
        for i in range(depth):
            if i == 0:
                layers.append(_linear(in_dim, width, used_in=true_in))
            elif skip is not None and i == skip + 1:
                layers.append(SkipLinear(width, in_dim, true_in))
            else:
                layers.append(_linear(width, width))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.layers:
            h = F.relu(layer(h, x)) if isinstance(layer, SkipLinear) else layer(h, relu=True)
        return h


class ProposalMLP(nn.Module):
    """Density-only MLP shared by all proposal levels."""

    def __init__(self, enc: EncodingConfig, cfg: ProposalConfig):
        super().__init__()
        self.encoding = PointEncoding(enc)
        self.trunk = Trunk(self.encoding.dim, cfg.width, cfg.depth, true_in=self.encoding.true_dim)
        self.density = _linear(cfg.width, ALIGN, used_out=1)  # output 0; the others are padding

    def forward(self, x: torch.Tensor, cov: torch.Tensor | None = None) -> torch.Tensor:
        """(..., 3) contracted points (and (..., 3, 3) covariances, integrated encoding) -> (...) density."""
        # the head's activation in fp32 whatever the matmuls ran in (docs/algorithm.md §4)
        return density_activation(self.density(self.trunk(self.encoding(x, cov)))[..., 0].float())


class NerfMLP(nn.Module):
    """The NeRF MLP: density and view-dependent color.

    ``head`` computes the 256-wide bottleneck and the density in one matmul
    (density = output ``bottleneck``); the view branch's direction part (and the
    appearance code's, with ``appearance_dim``) is computed once per ray and
    broadcast over the ray's samples.
    """

    def __init__(self, enc: EncodingConfig, cfg: NerfConfig, appearance_dim: int = 0):
        super().__init__()
        self.encoding = PointEncoding(enc)
        self.view_freqs = enc.view_max_freq
        self.bottleneck_width = cfg.bottleneck
        true_view = 3 + 3 * 2 * self.view_freqs
        self.trunk = Trunk(self.encoding.dim, cfg.width, cfg.depth, cfg.skip, true_in=self.encoding.true_dim)
        self.head = _linear(cfg.width, cfg.bottleneck + ALIGN, used_out=cfg.bottleneck + 1)
        fan_in = cfg.bottleneck + true_view + appearance_dim
        self.view_b = _linear(cfg.bottleneck, cfg.view_width, fan_in=fan_in)
        self.view_d = _linear(padded(true_view), cfg.view_width, fan_in=fan_in, used_in=true_view, bias=False)
        # the appearance code joins the view branch's input (multinerf's glo): one more part of that layer
        self.view_a = _linear(appearance_dim, cfg.view_width, fan_in=fan_in, bias=False) if appearance_dim else None
        self.rgb = _linear(cfg.view_width, ALIGN, used_out=3)

    def forward(self, x: torch.Tensor, viewdirs: torch.Tensor, cov: torch.Tensor | None = None,
                code: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, n, 3) contracted points, viewdirs (R, 3) -> density (R, n), rgb (R, n, 3).

        cov: (R, n, 3, 3) covariances for the integrated encoding, or None; code: the appearance code of
        each ray (R, A) or of all (A,), when the MLP has ``appearance_dim`` A.
        """
        out = self.head(self.trunk(self.encoding(x, cov)))
        b = self.bottleneck_width
        density = density_activation(out[..., b].float())  # activations in fp32: 1.002 is 1.0 in bf16
        per_ray = self.view_d(view_encoding(viewdirs, self.view_freqs))  # (R, view_width), once per ray
        if self.view_a is not None:
            per_ray = per_ray + self.view_a(code if code.dim() == 2 else code[None])
        h = F.relu(self.view_b(out[..., :b]) + per_ray[:, None, :])
        return density, color_activation(self.rgb(h)[..., :3].float())


def convert_unaligned_state(state: dict, skip: int) -> dict:
    """A state dict of the earlier, unpadded layout (concatenated skip and view inputs, one-output heads,
    separate bottleneck and density layers) in this layout; the same function.

    Args:
        state: keys of the plain modules (``proposal.trunk.layers.0.weight``, ``nerf.view.weight``, ...).
        skip: ``model.nerf.skip`` of the run.
    """
    if "nerf.view.weight" not in state:
        return state
    out = dict(state)

    def pad_cols(w: torch.Tensor) -> torch.Tensor:
        return F.pad(w, (0, padded(w.shape[1]) - w.shape[1]))

    def pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
        return F.pad(w, (0, 0, 0, rows - w.shape[0])) if w.ndim == 2 else F.pad(w, (0, rows - w.shape[0]))

    for mlp in ("proposal", "nerf"):
        out[f"{mlp}.trunk.layers.0.weight"] = pad_cols(state[f"{mlp}.trunk.layers.0.weight"])
    width = state["nerf.trunk.layers.0.weight"].shape[0]
    s = f"nerf.trunk.layers.{skip + 1}"
    w = out.pop(f"{s}.weight")
    out[f"{s}.h.weight"], out[f"{s}.x.weight"] = w[:, :width], pad_cols(w[:, width:])
    out[f"{s}.h.bias"] = out.pop(f"{s}.bias")
    for key in ("weight", "bias"):
        out[f"proposal.density.{key}"] = pad_rows(state[f"proposal.density.{key}"], ALIGN)
        bottleneck, dens = out.pop(f"nerf.bottleneck.{key}"), out.pop(f"nerf.density.{key}")
        out[f"nerf.head.{key}"] = pad_rows(torch.cat([bottleneck, dens]), bottleneck.shape[0] + ALIGN)
        out[f"nerf.rgb.{key}"] = pad_rows(state[f"nerf.rgb.{key}"], ALIGN)
    b = state["nerf.bottleneck.weight"].shape[0]
    view = out.pop("nerf.view.weight")
    out["nerf.view_b.weight"], out["nerf.view_d.weight"] = view[:, :b], pad_cols(view[:, b:])
    out["nerf.view_b.bias"] = out.pop("nerf.view.bias")
    return out
