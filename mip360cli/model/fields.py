"""Positional encodings and the proposal / NeRF MLPs (ALGORITHM.md section 4)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import EncodingConfig, NerfConfig, ProposalConfig


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


class PointEncoding(nn.Module):
    """Encoding of contracted points: xyz (PE + identity, 75 features) or icosahedron (504)."""

    def __init__(self, cfg: EncodingConfig):
        super().__init__()
        self.n_freqs = cfg.point_max_freq
        self.basis_name = cfg.basis
        if cfg.basis == "icosahedron":
            self.register_buffer("basis", torch.tensor(icosahedron_basis(), dtype=torch.float32).T, persistent=False)
            self.dim = self.basis.shape[1] * 2 * self.n_freqs
        else:
            self.basis = None
            self.dim = 3 + 3 * 2 * self.n_freqs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) contracted points -> (..., dim)."""
        if self.basis is not None:
            return pos_enc(x @ self.basis, self.n_freqs, append_identity=False)
        return pos_enc(x, self.n_freqs)


def _linear(i: int, o: int) -> nn.Linear:
    layer = nn.Linear(i, o)
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")  # He uniform
    nn.init.zeros_(layer.bias)
    return layer


def density_activation(raw: torch.Tensor) -> torch.Tensor:
    """``softplus(raw - 1)``."""
    return F.softplus(raw - 1)


def color_activation(raw: torch.Tensor) -> torch.Tensor:
    """``sigmoid(raw) * 1.002 - 0.001``: colors can reach exactly 0 and 1."""
    return torch.sigmoid(raw) * 1.002 - 0.001


class Trunk(nn.Module):
    """ReLU MLP of ``depth`` layers of ``width``; the input is concatenated after layer ``skip``."""

    def __init__(self, in_dim: int, width: int, depth: int, skip: int | None = None):
        super().__init__()
        self.skip = skip
        layers = []
        for i in range(depth):
            d_in = in_dim if i == 0 else width
            if skip is not None and i == skip + 1:
                d_in += in_dim
            layers.append(_linear(d_in, width))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            if self.skip is not None and i == self.skip + 1:
                h = torch.cat([h, x], dim=-1)
            h = F.relu(layer(h))
        return h


class ProposalMLP(nn.Module):
    """Density-only MLP shared by all proposal levels."""

    def __init__(self, enc: EncodingConfig, cfg: ProposalConfig):
        super().__init__()
        self.encoding = PointEncoding(enc)
        self.trunk = Trunk(self.encoding.dim, cfg.width, cfg.depth)
        self.density = _linear(cfg.width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) contracted points -> (...) density."""
        return density_activation(self.density(self.trunk(self.encoding(x)))[..., 0])


class NerfMLP(nn.Module):
    """The NeRF MLP: density and view-dependent color."""

    def __init__(self, enc: EncodingConfig, cfg: NerfConfig):
        super().__init__()
        self.encoding = PointEncoding(enc)
        self.view_freqs = enc.view_max_freq
        view_dim = 3 + 3 * 2 * self.view_freqs
        self.trunk = Trunk(self.encoding.dim, cfg.width, cfg.depth, cfg.skip)
        self.density = _linear(cfg.width, 1)
        self.bottleneck = _linear(cfg.width, cfg.bottleneck)
        self.view = _linear(cfg.bottleneck + view_dim, cfg.view_width)
        self.rgb = _linear(cfg.view_width, 3)

    def forward(self, x: torch.Tensor, viewdirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, n, 3) contracted points, viewdirs (R, 3) -> density (R, n), rgb (R, n, 3)."""
        h = self.trunk(self.encoding(x))
        density = density_activation(self.density(h)[..., 0])
        view = pos_enc(viewdirs, self.view_freqs)[:, None, :].expand(*h.shape[:-1], -1)
        h = F.relu(self.view(torch.cat([self.bottleneck(h), view.to(h.dtype)], dim=-1)))
        return density, color_activation(self.rgb(h))
