"""Mip-NeRF 360: proposal levels and the NeRF level composed from the pure modules."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import DataConfig, ModelConfig
from . import coord, gaussians, render, stepfun
from .fields import NerfMLP, PointEncoding, ProposalMLP, convert_unaligned_state
from .per_image import PerImage


@dataclass
class Level:
    """One sampling level of a batch of rays.

    s: (R, n+1) normalized edges; t: (R, n+1) metric edges; weights: (R, n);
    rgb: (R, 3) composited color (NeRF level only, else None).
    """

    s: torch.Tensor
    t: torch.Tensor
    weights: torch.Tensor
    rgb: torch.Tensor | None = None


COMPILE_BACKEND = "inductor"
"""torch.compile's backend (the tests put one that fails here, to check the fallback to eager)."""
COMPILE_PREFIX = "_orig_mod."  # what torch.compile's wrapper adds to the keys of a compiled submodule


def plain_state_dict(model: torch.nn.Module) -> dict:
    """``model.state_dict()`` with the keys of the plain modules, whether or not parts are compiled."""
    return {k.replace(COMPILE_PREFIX, ""): v for k, v in model.state_dict().items()}


def load_plain_state(model: "Mip360", state: dict) -> None:
    """Load a state dict saved compiled or not, in this layout or the earlier unpadded one, into ``model``,
    compiled or not (strict)."""
    state = convert_unaligned_state({k.replace(COMPILE_PREFIX, ""): v for k, v in state.items()}, model.cfg.nerf.skip)
    target = {k.replace(COMPILE_PREFIX, ""): k for k in model.state_dict()}
    model.load_state_dict({target.get(k, k): v for k, v in state.items()})


def dilations(samples: list[int], bias: float, multiplier: float) -> list[float]:
    """Max-dilation applied before each level after the first (docs/algorithm.md §3).

    ``bias + multiplier / prod(samples of the levels before)``.

    Example:
        >>> [round(d, 7) for d in dilations([64, 64, 32], 0.0025, 0.5)]
        [0.0103125, 0.0026221]
    """
    out, prod = [], 1
    for n in samples[:-1]:
        prod *= n
        out.append(bias + multiplier / prod)
    return out


class Mip360(nn.Module):
    """The multi-level sampler: the proposal levels of ``model.prop.samples`` (all evaluated by one shared
    proposal MLP), then the NeRF level (64, 64, 32 samples by default).

    Args:
        cfg: the ``model`` config section.
        near, far: ray bounds in normalized scene units (``data.near``, ``data.far``).
        n_images: training images, for what is learned per image (appearance codes, pose corrections).
        refine_poses: learn a pose correction per training image (``train.refine_cameras``).
    """

    def __init__(self, cfg: ModelConfig, near: float, far: float, n_images: int = 0, refine_poses: bool = False):
        super().__init__()
        self.cfg, self.near, self.far = cfg, near, far
        self.samples = [*cfg.prop.samples, cfg.nerf.samples]
        self.proposal = ProposalMLP(cfg.encoding, cfg.prop)
        self.nerf = NerfMLP(cfg.encoding, cfg.nerf, cfg.appearance.dim)
        self.images = PerImage(n_images, cfg.appearance.dim, refine_poses)
        self.mlp_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 for autocast on CUDA
        self.compiled = False
        self.compile_backend = COMPILE_BACKEND
        # Recompute the proposal MLP's activations in backward instead of keeping them (train.recompute_proposal):
        # a third of the activation memory for a few percent more matmul work.
        self.recompute_proposal = False

    def compile_forward(self) -> None:
        """torch.compile the whole forward (sampling, MLPs, compositing) in place.

        The state dict keeps the plain keys. Shapes are static: each batch size
        compiles once (a training batch, a render chunk), nothing recompiles from
        step to step (``train_frac`` is a tensor).
        """
        self.compile_backend = COMPILE_BACKEND
        self.compile(dynamic=False, backend=self.compile_backend)
        self.compiled = True

    def uncompile(self) -> None:
        """Back to the eager forward (after a compilation that failed)."""
        self._compiled_call_impl = None
        self.compiled = False

    @classmethod
    def from_config(cls, model: ModelConfig, data: DataConfig, n_images: int = 0,
                    refine_poses: bool = False) -> "Mip360":
        return cls(model, data.near, data.far, n_images, refine_poses)

    @property
    def integrated(self) -> bool:
        """Whether samples are encoded as integrated Gaussians (the rays need their ``radii``)."""
        return self.cfg.encoding.integrated

    def appearance_code(self, rows: torch.Tensor | None = None, code: torch.Tensor | None = None
                        ) -> torch.Tensor | None:
        """The appearance code to render with: the training rows' (R,) codes, a given ``code`` (A,) or
        (R, A), or else the mean of the training images'; None for a model without appearance codes."""
        if self.images.codes is None:
            return None
        if rows is not None:
            return self.images.code(rows)
        return code.to(self.images.codes.device, torch.float32) if code is not None else self.images.mean_code()

    def n_levels(self) -> int:
        return len(self.samples)

    def _autocast(self, device: torch.device):
        if self.mlp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.mlp_dtype)

    def forward(self, origins: torch.Tensor, directions: torch.Tensor, viewdirs: torch.Tensor,
                train_frac: float | torch.Tensor = 1.0, jitter: torch.Tensor | None = None,
                radii: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                code: torch.Tensor | None = None) -> list[Level]:
        """Render a batch of rays through every level.

        Args:
            origins, directions, viewdirs: (R, 3) rays (directions not normalized).
            train_frac: step / max_steps for annealing (1 at render time); a 0-d tensor in
                training, so that a compiled forward does not recompile as it changes.
            jitter: None for deterministic sampling, else (R, n_levels) uniform
                [0, 1) numbers: one offset per ray and level (single jitter).
            radii: (R,) pixel cone radius at distance 1 along ``directions``
                (:func:`~mip360cli.model.gaussians.pixel_radii`); needed with the integrated encoding.
            rows: (R,) training row of each ray's image (its appearance code), or None;
            code: the appearance code (A,) or (R, A) to use when ``rows`` is None (default: the mean).
        Returns:
            one :class:`Level` per level; the last holds the NeRF color.
        """
        cfg = self.cfg
        if self.integrated and radii is None:
            raise ValueError("the integrated encoding needs the rays' radii")
        code = self.appearance_code(rows, code)
        n_rays = origins.shape[0]
        s = torch.tensor([0.0, 1.0], device=origins.device).expand(n_rays, 2)
        w = torch.ones(n_rays, 1, device=origins.device)
        levels: list[Level] = []
        dilation = dilations(self.samples, cfg.dilation_bias, cfg.dilation_multiplier)
        for i, n in enumerate(self.samples):
            if i > 0:
                s, w = stepfun.max_dilate_weights(s, w, dilation[i - 1], domain=(0.0, 1.0), renormalize=True)
                s, w = s[..., 1:-1], w[..., 1:-1]
            logits = stepfun.anneal_weights(s, w, train_frac, cfg.anneal_slope)
            s = stepfun.sample_intervals(s, logits, n, None if jitter is None else jitter[:, i:i + 1],
                                         domain=(0.0, 1.0)).detach()
            t = coord.s_to_t(s, self.near, self.far)
            if self.integrated:
                x, cov = gaussians.contract_gaussians(*gaussians.frustum_gaussians(origins, directions, radii, t))
            else:
                tmid = (t[..., 1:] + t[..., :-1]) / 2
                x, cov = coord.contract(origins[:, None, :] + directions[:, None, :] * tmid[..., None]), None
            last = i == len(self.samples) - 1
            with self._autocast(origins.device):
                if last:
                    density, rgb = self.nerf(x, viewdirs, cov, code)
                elif self.recompute_proposal and torch.is_grad_enabled():
                    density, rgb = checkpoint(self.proposal, x, cov, use_reentrant=False), None
                else:
                    density, rgb = self.proposal(x, cov), None
            density = density.float()
            w = render.alpha_weights(density, t, directions, cfg.opaque_background)
            color = render.composite(w, rgb.float()) if last else None
            levels.append(Level(s, t, w, color))
            w = w.detach()
        return levels


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters of the model of ``cfg``, counted on the meta device: nothing is allocated, so a config
    too large for any machine (a width of 1e9) is measured before it is refused."""
    with torch.device("meta"):
        model = Mip360(cfg, 0.2, 1.0)
    return sum(p.numel() for p in model.parameters())


def training_bytes(cfg: ModelConfig, batch_rays: int, value_bytes: int, recompute_proposal: bool) -> float:
    """About what a training step keeps: the parameters four times (weights, gradients, Adam's two moments,
    float32) and, per ray, one activation per layer and sample of every level that keeps them for backward
    (the NeRF MLP; the proposal MLP unless it is recomputed), in ``value_bytes`` (2 for bf16, 4 for fp32).
    On an H200 the paper preset's 16384-ray bf16 step kept 13.0 GiB (8.7 recomputing the proposal MLP)."""
    point = PointEncoding(cfg.encoding).dim
    nerf = cfg.nerf.samples * (point + cfg.nerf.width * (cfg.nerf.depth + 1) + cfg.nerf.bottleneck)
    prop = 0 if recompute_proposal else sum(cfg.prop.samples) * (point + cfg.prop.width * cfg.prop.depth)
    # the integrated encoding keeps each sample's covariances (before and after contraction) and its
    # variances and damping factors, in float32
    gaussians = 4 * (9 + 9 + 2 * point) * (sum(cfg.prop.samples) + cfg.nerf.samples) if cfg.encoding.integrated else 0
    return 16.0 * parameter_count(cfg) + float(batch_rays) * ((nerf + prop) * value_bytes + gaussians)


GPU_CHUNK_RAYS = 8192
CPU_CHUNK_BYTES = 16 << 20  # the largest activation of a chunk on the CPU: in the caches, under malloc's mmap


def chunk_rays(setting: int | str, model: Mip360, device: torch.device) -> int:
    """``render.chunk_rays`` for this model and device: a number as it is; ``auto`` is 8192 rays on a GPU and,
    on the CPU, the power of two (64 to 8192) whose largest per-sample MLP activation is about 16 MiB.

    On the project's 2-core CPU the tiny preset renders 37,600 rays/s in chunks of 2048 (what auto picks),
    24,500 in 4096 and 14,700 in 8192; the paper preset 760 in 128 (auto) and 554 in 576.

    Example:
        tiny (widths 64 on 32 samples, 128 on 16): 8 KiB a ray -> 2048 rays.
    """
    if setting != "auto":
        return int(setting)
    if device.type != "cpu":
        return GPU_CHUNK_RAYS
    prop, nerf = model.cfg.prop, model.cfg.nerf
    floats = max(max(prop.width, model.proposal.encoding.dim) * max(prop.samples),
                 max(nerf.width, model.nerf.encoding.dim) * nerf.samples)
    rays = CPU_CHUNK_BYTES // (4 * floats)
    return min(8192, max(64, 1 << (max(rays, 1).bit_length() - 1)))  # the power of two <= rays


def render_rays(model: Mip360, origins: torch.Tensor, directions: torch.Tensor, viewdirs: torch.Tensor,
                chunk: int | str, depth: bool = True, pad_to: int | None = None, radii: torch.Tensor | None = None,
                code: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Render rays deterministically in chunks (memory bounded by ``chunk``), without gradients.

    Args:
        origins, directions, viewdirs: (R, 3).
        chunk: rays at once, or ``auto`` (:func:`chunk_rays`).
        radii: (R,) pixel cone radii (needed by a model with the integrated encoding).
        code: the appearance code (A,) for all rays (default: the mean of the training images').
        pad_to: pad a shorter chunk to this many rays (repeating its last ray), so that every
            call has one shape: a compiled model compiles once. Default: min(chunk, R) when the
            model is compiled (one shape per image size), else no padding.
    Returns:
        rgb (R, 3), acc (R,), and with ``depth`` mean_depth (R,), median_depth (R,).
    """
    n = origins.shape[0]
    chunk = chunk_rays(chunk, model, origins.device)
    if pad_to is None:
        pad_to = min(chunk, n) if getattr(model, "compiled", False) else 0
    out: dict[str, list[torch.Tensor]] = {"rgb": [], "acc": [], "mean_depth": [], "median_depth": []}
    # radii travel with the rays (chunked and padded alike) where the model uses them; it says if they are missing
    with_radii = radii is not None and getattr(model, "integrated", False)
    per_ray = (origins, directions, viewdirs, radii[:, None]) if with_radii else (origins, directions, viewdirs)
    with torch.inference_mode():
        for a in range(0, n, chunk):
            rays = [x[a:a + chunk] for x in per_ray]
            real = rays[0].shape[0]
            if real < pad_to:
                rays = [torch.cat([x, x[-1:].expand(pad_to - real, x.shape[1])]) for x in rays]
            kwargs = {"radii": rays[3][:, 0]} if with_radii else {}
            if code is not None:
                kwargs["code"] = code
            last = model(*rays[:3], **kwargs)[-1]
            out["rgb"].append(last.rgb[:real])
            out["acc"].append(last.weights.sum(-1)[:real])
            if depth:
                w, t = last.weights[:real], last.t[:real]
                out["mean_depth"].append(render.mean_depth(w, t, model.near, model.far))
                out["median_depth"].append(render.median_depth(w, t, model.near, model.far))
    return {k: torch.cat(v) for k, v in out.items() if v}
