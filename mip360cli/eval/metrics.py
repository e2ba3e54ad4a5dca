"""PSNR, SSIM and 8-bit quantization exactly as docs/algorithm.md §8 (multinerf's definitions). Pure functions."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import UserError


def psnr(img: np.ndarray, gt: np.ndarray, keep: np.ndarray | None = None) -> float:
    """``-10 log10(MSE)`` of images in [0, 1] (any shape); ``keep`` (H, W) bool: only over those pixels."""
    err = (np.asarray(img, np.float64) - np.asarray(gt, np.float64)) ** 2
    mse = float(np.mean(err if keep is None else err[keep]))
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def quantize(img: np.ndarray) -> np.ndarray:
    """An image in [0, 1] rounded to 8 bits, as a PNG of it holds: float64 in [0, 1].

    Example:
        >>> quantize(np.array([0.0, 0.3, 0.5, 1.2])).round(6).tolist()
        [0.0, 0.298039, 0.501961, 1.0]
    """
    return np.round(np.clip(np.asarray(img, np.float64), 0, 1) * 255) / 255


def gaussian_filter(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalized 1-D Gaussian of ``size`` taps: (size,) float64."""
    half = size // 2
    shift = (2 * half - size + 1) / 2
    f = np.exp(-0.5 * ((np.arange(size) - half + shift) / sigma) ** 2)
    return f / f.sum()


def ssim(img: np.ndarray, gt: np.ndarray, max_val: float = 1.0, size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, keep: np.ndarray | None = None) -> float:
    """Mean SSIM over pixels and channels: Gaussian window, 'valid' filtering, per channel.

    Args:
        img, gt: (H, W, C) or (H, W) images in [0, max_val].
        keep: (H, W) bool: the mean only over the windows centred on these pixels.
    """
    a = torch.as_tensor(np.asarray(img, np.float64))
    b = torch.as_tensor(np.asarray(gt, np.float64))
    if min(a.shape[0], a.shape[1]) < size:
        raise UserError(f"SSIM needs images of at least {size}x{size} pixels (its window); these are "
                        f"{a.shape[1]}x{a.shape[0]}", hint="evaluate at a larger --ratio")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    a, b = a.permute(2, 0, 1)[:, None], b.permute(2, 0, 1)[:, None]  # (C, 1, H, W)
    f = torch.as_tensor(gaussian_filter(size, sigma))

    def blur(z):
        z = F.conv2d(z, f.view(1, 1, -1, 1))
        return F.conv2d(z, f.view(1, 1, 1, -1))

    mu0, mu1 = blur(a), blur(b)
    mu00, mu11, mu01 = mu0 * mu0, mu1 * mu1, mu0 * mu1
    s00 = (blur(a * a) - mu00).clamp_min(0)
    s11 = (blur(b * b) - mu11).clamp_min(0)
    s01 = blur(a * b) - mu01
    s01 = torch.sign(s01) * torch.minimum(torch.sqrt(s00 * s11), s01.abs())
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    ssim_map = ((2 * mu01 + c1) * (2 * s01 + c2)) / ((mu00 + mu11 + c1) * (s00 + s11 + c2))
    if keep is None:
        return float(ssim_map.mean())
    h, w = ssim_map.shape[-2:]
    lo = size // 2
    centres = torch.as_tensor(np.asarray(keep)[lo:lo + h, lo:lo + w])
    return float(ssim_map[..., centres].mean()) if centres.any() else float("nan")
