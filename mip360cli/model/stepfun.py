"""Step functions on sorted edges: sampling, dilation, annealing, outer measure. Pure functions.

A step function along a ray is ``t`` (..., n+1) sorted edges and ``w`` (..., n)
non-negative weights of the n intervals (docs/algorithm.md §3).
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps


def integrate_weights(w: torch.Tensor) -> torch.Tensor:
    """CDF on the edges of a step function: (..., n) -> (..., n+1), 0 first, 1 last."""
    cw = torch.cumsum(w[..., :-1], dim=-1).clamp_max(1)
    zeros = torch.zeros_like(w[..., :1])
    return torch.cat([zeros, cw, torch.ones_like(zeros)], dim=-1)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, batched over leading dims.

    Args:
        x: (..., m) query points; xp: (..., k) increasing; fp: (..., k) values.
    Returns:
        (..., m); clamped to fp's ends outside [xp[0], xp[-1]].
    """
    k = xp.shape[-1]
    i = torch.searchsorted(xp.contiguous(), x.contiguous(), right=True).clamp(1, k - 1)
    x0, x1 = xp.gather(-1, i - 1), xp.gather(-1, i)
    f0, f1 = fp.gather(-1, i - 1), fp.gather(-1, i)
    span = x1 - x0
    frac = torch.where(span > 0, (x - x0) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(span)).clamp(0, 1)
    return f0 + frac * (f1 - f0)


def invert_cdf(u: torch.Tensor, t: torch.Tensor, w_logits: torch.Tensor) -> torch.Tensor:
    """Positions where the CDF of softmax(w_logits) on edges t reaches u: (..., m)."""
    w = torch.softmax(w_logits, dim=-1)
    return interp(u, integrate_weights(w), t)


def sample(t: torch.Tensor, w_logits: torch.Tensor, n: int, jitter: torch.Tensor | None = None,
           deterministic_center: bool = False) -> torch.Tensor:
    """Draw n sorted samples from a step function by inverting its CDF.

    Args:
        t: (..., k+1) edges; w_logits: (..., k) log-weights (-inf = empty).
        n: number of samples.
        jitter: None for deterministic samples, else (..., 1) uniform [0, 1)
            numbers: one offset for the whole ray ("single jitter").
        deterministic_center: without jitter, use the centers of n equal bins
            (``linspace(1/2n, 1 - 1/2n - eps, n)``) instead of ``linspace(0, 1 - eps, n)``.
    Returns:
        (..., n) sorted samples.
    """
    shape = t.shape[:-1] + (n,)
    if jitter is None:
        if deterministic_center:
            pad = 1 / (2 * n)
            u = torch.linspace(pad, 1 - pad - EPS32, n, dtype=t.dtype, device=t.device)
        else:
            u = torch.linspace(0, 1 - EPS32, n, dtype=t.dtype, device=t.device)
        u = u.expand(shape)
    else:
        u_max = EPS32 + (1 - EPS32) / n
        max_jitter = (1 - u_max) / (n - 1) - EPS32
        u = torch.linspace(0, 1 - u_max, n, dtype=t.dtype, device=t.device) + jitter.to(t.dtype) * max_jitter
    return invert_cdf(u, t, w_logits)


def sample_intervals(t: torch.Tensor, w_logits: torch.Tensor, n: int, jitter: torch.Tensor | None = None,
                     domain: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Sample n intervals: centers by :func:`sample`, edges at their midpoints.

    The first and last edges mirror the nearest midpoint and are clipped to ``domain``.

    Args:
        t: (..., k+1) edges; w_logits: (..., k); jitter: None or (..., 1).
    Returns:
        (..., n+1) edges.

    Example:
        >>> t = torch.tensor([0.0, 1.0])
        >>> [round(x, 6) for x in sample_intervals(t, torch.zeros(1), 4).tolist()]
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if n <= 1:
        raise ValueError(f"need at least 2 samples, got {n}")
    centers = sample(t, w_logits, n, jitter, deterministic_center=True)
    mid = (centers[..., 1:] + centers[..., :-1]) / 2
    first = (2 * centers[..., :1] - mid[..., :1]).clamp_min(domain[0])
    last = (2 * centers[..., -1:] - mid[..., -1:]).clamp_max(domain[1])
    return torch.cat([first, mid, last], dim=-1)


def weight_to_pdf(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weights -> densities (weight / interval width), 0-width intervals made safe."""
    return w / (t[..., 1:] - t[..., :-1]).clamp_min(EPS32 ** 2)


def pdf_to_weight(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p * (t[..., 1:] - t[..., :-1])


def max_dilate(t: torch.Tensor, w: torch.Tensor, dilation: float,
               domain: tuple[float, float] = (-float("inf"), float("inf"))) -> tuple[torch.Tensor, torch.Tensor]:
    """Dilate a non-negative step function by max-pooling over ``[x - dilation, x + dilation]``.

    At each new edge x, the value is the max of w_j over the intervals j whose
    dilated extent ``[t_j - d, t_{j+1} + d)`` contains x. Because both ends are
    sorted, those j form one contiguous range, so the max is a range-max query
    answered with a sparse table: O(n log n) memory instead of the O(n^2) of
    comparing every edge with every interval (kept as :func:`max_dilate_bruteforce`).

    Args:
        t: (..., k+1) edges; w: (..., k) non-negative values.
    Returns:
        t_dilate (..., 3k+1) sorted edges clipped to ``domain``; w_dilate (..., 3k).
    """
    t0 = t[..., :-1] - dilation
    t1 = t[..., 1:] + dilation
    t_dilate = torch.sort(torch.cat([t, t0, t1], dim=-1), dim=-1).values.clamp(*domain)
    n = w.shape[-1]
    hi = torch.searchsorted(t0.contiguous(), t_dilate, right=True) - 1  # last j with t0_j <= x
    lo = torch.searchsorted(t1.contiguous(), t_dilate, right=True)      # first j with t1_j > x
    valid = hi >= lo
    lo_c, hi_c = lo.clamp(0, n - 1), hi.clamp(0, n - 1)
    # Sparse table: level k holds max(w[j : j + 2^k]) (zero past the end; w >= 0).
    levels = [w]
    span = 1
    while 2 * span <= n:
        prev = levels[-1]
        shifted = torch.cat([prev[..., span:], torch.zeros_like(prev[..., :span])], dim=-1)
        levels.append(torch.maximum(prev, shifted))
        span *= 2
    table = torch.stack(levels, dim=-2).flatten(-2)  # (..., K * n)
    length = (hi_c - lo_c + 1).clamp_min(1)
    k = torch.floor(torch.log2(length.to(torch.float64))).to(torch.long).clamp(0, len(levels) - 1)
    a = k * n + lo_c
    b = k * n + (hi_c - (1 << k) + 1).clamp_min(0)
    value = torch.maximum(table.gather(-1, a), table.gather(-1, b))
    w_dilate = torch.where(valid, value, torch.zeros_like(value))[..., :-1]
    return t_dilate, w_dilate


def max_dilate_bruteforce(t: torch.Tensor, w: torch.Tensor, dilation: float,
                          domain: tuple[float, float] = (-float("inf"), float("inf"))
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """O(n^2) reference of :func:`max_dilate` (for tests): every edge against every interval."""
    t0 = t[..., :-1] - dilation
    t1 = t[..., 1:] + dilation
    t_dilate = torch.sort(torch.cat([t, t0, t1], dim=-1), dim=-1).values.clamp(*domain)
    inside = (t0[..., None, :] <= t_dilate[..., :, None]) & (t1[..., None, :] > t_dilate[..., :, None])
    w_dilate = torch.where(inside, w[..., None, :], torch.zeros_like(w[..., None, :])).amax(-1)[..., :-1]
    return t_dilate, w_dilate


def max_dilate_weights(t: torch.Tensor, w: torch.Tensor, dilation: float,
                       domain: tuple[float, float] = (-float("inf"), float("inf")),
                       renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Dilate weights by max-pooling their pdf (docs/algorithm.md §3); optionally renormalize to sum 1.

    Returns t_dilate (..., 3k+1), w_dilate (..., 3k).
    """
    t_dilate, p_dilate = max_dilate(t, weight_to_pdf(t, w), dilation, domain)
    w_dilate = pdf_to_weight(t_dilate, p_dilate)
    if renormalize:
        w_dilate = w_dilate / w_dilate.sum(-1, keepdim=True).clamp_min(EPS32 ** 2)
    return t_dilate, w_dilate


def anneal_weights(t: torch.Tensor, w: torch.Tensor, train_frac: float, slope: float = 10.0) -> torch.Tensor:
    """Resampling logits ``a * log w`` with Schlick's bias ``a = s f / ((s - 1) f + 1)``.

    Intervals of zero width get -inf (never sampled). Returns (..., k) logits.
    """
    a = slope * train_frac / ((slope - 1) * train_frac + 1) if slope > 0 else 1.0
    logw = torch.log(w.clamp_min(0))
    return torch.where(t[..., 1:] > t[..., :-1], a * logw, torch.full_like(w, -float("inf")))


def searchsorted_lo_hi(a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each v: largest i with a[i] <= v (else 0), smallest i with a[i] > v (else last).

    Args:
        a: (..., k) sorted; v: (..., m).
    Returns:
        idx_lo, idx_hi: (..., m) int64.
    """
    k = a.shape[-1]
    hi = torch.searchsorted(a.contiguous(), v.contiguous(), right=True)  # first index with a[i] > v
    idx_lo = (hi - 1).clamp(0, k - 1)
    idx_hi = hi.clamp_max(k - 1)
    return idx_lo, idx_hi


def outer_measure(t: torch.Tensor, t_env: torch.Tensor, w_env: torch.Tensor) -> torch.Tensor:
    """Total envelope weight of the envelope intervals overlapping each interval of t.

    Args:
        t: (..., n+1) query edges; t_env: (..., k+1); w_env: (..., k).
    Returns:
        (..., n) outer measure of each query interval.
    """
    cw = torch.cat([torch.zeros_like(w_env[..., :1]), torch.cumsum(w_env, dim=-1)], dim=-1)
    idx_lo, idx_hi = searchsorted_lo_hi(t_env, t)
    cw_lo = cw.gather(-1, idx_lo)
    cw_hi = cw.gather(-1, idx_hi)
    return cw_hi[..., 1:] - cw_lo[..., :-1]
