"""One training step and what it keeps on the device: the optimizer, the losses, the step's figures.

Nothing here reads a value back from the device: the loop reads :class:`DeviceStats` every few steps.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..core import distributed
from ..data.cameras import pixel_rays
from ..model import losses
from ..model.gaussians import pixel_radii
from ..model.model import Level, Mip360
from .schedule import learning_rate


class RayStep(nn.Module):
    """What a training step runs (and DDP wraps): each ray from its camera and pixel, through the model's pose
    correction of its camera (``train.refine_cameras``), then the model with the ray's pixel radius
    (integrated encoding) and its image's appearance code.

    Args:
        model: the model; cameras: ``K``, ``c2w`` (N, 3, 4), ``dist`` tensors of all the cache's cameras
            (:func:`~mip360cli.data.cameras.cameras_to_tensors`); train: (T,) the training cameras, in the
            order of the model's per-image rows.
    """

    def __init__(self, model: Mip360, cameras: dict, train: torch.Tensor):
        super().__init__()
        self.model = model
        self.K, self.c2w, self.dist = cameras["K"], cameras["c2w"], cameras["dist"]
        self.train = train
        self.row_of = torch.zeros(self.c2w.shape[0], dtype=torch.long, device=train.device)
        self.row_of[train] = torch.arange(len(train), device=train.device)

    def forward(self, cam: torch.Tensor, u: torch.Tensor, v: torch.Tensor, train_frac: torch.Tensor,
                jitter: torch.Tensor) -> list[Level]:
        """cam, u, v: (R,) camera and pixel of each ray -> the model's levels."""
        model, c2w = self.model, self.c2w
        if model.images.pose_delta is not None:
            c2w = c2w.index_copy(0, self.train, model.images.corrected(c2w[self.train]))
        o, d, vd = pixel_rays(self.K, c2w, self.dist, cam, u, v)
        radii = pixel_radii(self.K, cam) if model.integrated else None
        rows = self.row_of[cam] if model.images.codes is not None else None
        return model(o, d, vd, train_frac=train_frac, jitter=jitter, radii=radii, rows=rows)


class DeviceStats:
    """A training step's figures, kept on the device between reads.

    ``record`` is a few device operations per step (no host sync); ``read``
    brings back: steps skipped since the last read, the longest run of skipped
    steps since then (carried over the read), the MSE of the last finite step
    and the last step's loss terms (the mean over processes).
    """

    TERMS = ("loss", "data", "interlevel", "distortion")

    def __init__(self, device: torch.device, step: int):
        self.step = torch.tensor(float(step), device=device)  # the step as a tensor: train_frac without a copy
        # skipped since the last read, current run of skipped steps, longest run, last finite mse, then TERMS
        self.values = torch.zeros(4 + len(self.TERMS), device=device)
        self.values[3] = float("nan")

    def record(self, finite: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        bad = 1.0 - finite
        v = self.values
        run = (v[1] + 1.0) * bad
        mse = torch.where(finite > 0, terms["mse"].detach().float(), v[3])
        latest = torch.stack([terms[k].detach().float() for k in self.TERMS])
        self.values = torch.cat([torch.stack([v[0] + bad, run, torch.maximum(v[2], run), mse]), latest])
        self.step += 1

    def read(self, env: distributed.DistEnv) -> tuple[int, int, float, list[float]]:
        v = self.values
        terms = distributed.all_mean(torch.nan_to_num(v[4:], nan=float("inf")), env)
        values = v[:4].tolist() + terms.tolist()
        self.values = torch.cat([torch.stack([torch.zeros_like(v[0]), v[1], v[1], v[3]]), v[4:]])
        return int(values[0]), int(values[2]), values[3], values[4:]


def parameter_groups(model: Mip360) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The model's trainable parameters: the scene's (with the appearance codes; their gradients are clipped
    together) and the cameras' (the pose corrections, when refined: own learning rate, not clipped)."""
    poses = model.images.pose_delta
    return ([p for p in model.parameters() if p.requires_grad and p is not poses],
            [poses] if poses is not None else [])


def make_optimizer(model: Mip360, cfg: Config) -> torch.optim.Adam:
    """Fused Adam (CPU and CUDA): it skips a step on the device when ``found_inf`` is set (no host sync).

    One parameter group for the scene (and the appearance codes); with ``train.refine_cameras`` a second,
    ``cameras``, for the pose corrections, with their own learning rate (:func:`set_learning_rates`).
    """
    tc = cfg.train
    scene, cameras = parameter_groups(model)
    groups = [{"params": scene, "name": "scene"}]
    if cameras:
        groups.append({"params": cameras, "name": "cameras", "lr": tc.camera_lr_init})
    return torch.optim.Adam(groups, lr=tc.lr_init, betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_eps,
                            fused=True)


def set_learning_rates(optimizer: torch.optim.Adam, step: int, cfg: Config) -> float:
    """Set each group's learning rate for ``step``; returns the scene's."""
    tc = cfg.train
    lr = learning_rate(step, tc.lr_init, tc.lr_final, tc.max_steps, tc.lr_delay_steps, tc.lr_delay_mult)
    for group in optimizer.param_groups:
        group["lr"] = (learning_rate(step, tc.camera_lr_init, tc.camera_lr_final, tc.max_steps)
                       if group.get("name") == "cameras" else lr)
    return lr


def load_optimizer_state(optimizer: torch.optim.Adam, state: dict) -> None:
    """Adam's moments and step counts from a checkpoint, kept fused whatever the writer used (earlier
    versions used the non-fused Adam on the CPU: its state is the same, its flags are not)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st:  # the fused kernels want the step count on the parameter's device, float32
                st["step"] = torch.as_tensor(st["step"], dtype=torch.float32).to(p.device)


def compute_losses(levels: list[Level], gt: torch.Tensor, cfg: Config) -> dict[str, torch.Tensor]:
    """Charbonnier data loss on the NeRF level, interlevel loss per proposal level, distortion."""
    last = levels[-1]
    data = losses.charbonnier(last.rgb, gt)
    inter = sum(losses.interlevel(last.s, last.weights, lv.s, lv.weights).mean() for lv in levels[:-1])
    dist = losses.distortion(last.s, last.weights).mean()
    total = data + cfg.train.interlevel_weight * inter + cfg.train.distortion_weight * dist
    mse = ((last.rgb.detach() - gt) ** 2).mean()
    return {"loss": total, "data": data, "interlevel": inter, "distortion": dist, "mse": mse}


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn, params: list[torch.Tensor],
               max_norm: float, rays: tuple[torch.Tensor, ...], gt: torch.Tensor,
               train_frac: torch.Tensor, jitter: torch.Tensor,
               env: distributed.DistEnv | None = None,
               unclipped: list[torch.Tensor] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimization step, all on the device (no value is read back).

    Args:
        net: the model (or :class:`RayStep`, or their DDP wrapper); optimizer: a fused Adam (it skips the
            update on the device when the step is not finite); loss_fn: ``levels, gt -> terms``.
        params: the parameters whose gradients are clipped to ``max_norm`` (global norm);
            unclipped: parameters whose gradients are only checked (the pose corrections).
        rays: what ``net`` takes: origins, directions, viewdirs (R, 3) for the model; camera, u, v (R,)
            for a RayStep. gt: (R, 3) in [0, 1]; train_frac: 0-d tensor; jitter: (R, levels).
    Returns:
        finite: 0-d float tensor, 1 when the step was applied (the same on every process);
        the loss terms (tensors).
    """
    levels = net(*rays, train_frac=train_frac, jitter=jitter)
    terms = loss_fn(levels, gt)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if unclipped:
        grad_norm = grad_norm + torch.nn.utils.clip_grad_norm_(unclipped, float("inf"))
    finite = (torch.isfinite(terms["loss"].detach()) & torch.isfinite(grad_norm)).float()
    if env is not None and env.enabled:  # every process skips the same steps
        distributed.all_min_(finite, env)
    optimizer.found_inf = 1.0 - finite
    optimizer.step()
    return finite, terms
