"""Opening a trained run: its config, the model of a checkpoint on a device, its cameras and split.

render, eval, view, export and the Python API open a run through :func:`load_run`; the model a
stage trains or renders is built by :func:`build_model`, which applies the run's precision and
compile settings the same way everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, load_config
from ..core.device import compile_enabled, mlp_dtype, resolve_device
from ..core.errors import UserError
from ..data.cameras import Cameras, similarity_alignment
from ..model.model import Mip360, load_plain_state
from ..model.per_image import correct_poses
from . import checkpoints as ckpt
from .cameras_file import read_cameras_json
from .folder import RunFolder
from .views import View, nearest_camera, split_views


def build_model(cfg: Config, device: torch.device, n_images: int = 0) -> Mip360:
    """The model of ``cfg`` on ``device``, in the precision and compiled state ``cfg.train`` asks for there.

    ``n_images``: the run's training images (for appearance codes and pose corrections). Weights are freshly
    initialized (seeded by the caller); load a checkpoint with :func:`~mip360cli.model.model.load_plain_state`.
    """
    model = Mip360.from_config(cfg.model, cfg.data, n_images, cfg.train.refine_cameras).to(device)
    model.mlp_dtype = mlp_dtype(cfg.train.precision, device)
    model.recompute_proposal = cfg.train.recompute_proposal
    if compile_enabled(cfg.train.compile, device):  # in fixed-size chunks when rendering
        model.compile_forward()
    return model


@dataclass
class LoadedRun:
    """A trained run ready to render: its config, model, cameras (normalized, at the cache's resolution)."""

    run: Path
    cfg: Config
    model: Mip360
    step: int
    cameras: Cameras
    transform: np.ndarray
    """(4, 4) input world -> normalized world."""
    train: np.ndarray
    test: np.ndarray
    cache_path: Path | None
    device: torch.device
    cache_fingerprint: str | None = None
    """The fingerprint of the cache the checkpoint was trained on (its held-out photos are only valid then)."""
    checkpoint: Path | None = None
    image_source: dict | None = None
    """How the training images were made (cameras.json; ``data.scene.image_source``), None when not recorded."""
    train_seconds: float | None = None
    """Training time up to the checkpoint (all processes' wall time, resumes summed); None for older runs."""

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run)

    @property
    def scale(self) -> float:
        """Normalized units per input unit."""
        return float(np.linalg.norm(self.transform[0, :3]))

    def views(self, split: str, ratio: float | None = None) -> list[View]:
        """The ``test`` or ``train`` cameras at ``ratio`` of the original photos (default: the training ratio)."""
        idx = self.test if split == "test" else self.train
        return split_views(self.cameras, idx, self.image_scale(ratio), split)

    def appearance_code(self, choice: str = "mean") -> torch.Tensor | None:
        """The appearance code ``choice`` names: ``mean`` (of the training images'), or a training image's name
        (with or without its extension). None for a model without codes, which takes only ``mean``."""
        images = self.model.images
        if images.codes is None:
            if choice != "mean":
                raise UserError(f"--appearance {choice}: {self.run} was trained without appearance codes",
                                hint="train with model.appearance.dim=4 to learn one per image")
            return None
        if choice == "mean":
            return images.mean_code().detach()
        return images.codes[self.training_row(choice)].detach()

    def training_row(self, name: str) -> int:
        """The row (position in the training split) of the training image called ``name`` (or its stem)."""
        def called(i: int) -> bool:
            return name in (self.cameras.names[i], Path(self.cameras.names[i]).stem)

        for j, i in enumerate(self.train):
            if called(i):
                return j
        if any(called(i) for i in self.test):
            raise UserError(f"--appearance {name}: that image was held out, so it has no appearance code",
                            hint="name a training image, or use mean")
        shown = ", ".join(Path(self.cameras.names[i]).stem for i in self.train[:5])
        raise UserError(f"--appearance {name}: no training image of {self.run} is called that",
                        hint=f"use mean, or one of its training images ({shown}{', ...' if len(self.train) > 5 else ''})")

    def nearest_training_row(self, c2w: np.ndarray) -> int:
        """The row of the training camera nearest ``c2w`` (3, 4): by position, then by viewing direction."""
        return nearest_camera(self.cameras.c2w[self.train], c2w)

    def image_scale(self, ratio: float | None) -> float:
        """The factor from the cameras' size (the training ratio) to ``ratio`` of the original photos."""
        return (ratio if ratio else self.cfg.data.ratio) / self.cfg.data.ratio


def refined_cameras(model: Mip360, cameras: Cameras, train: np.ndarray) -> Cameras:
    """``cameras`` with the model's pose corrections applied to its training cameras (``train.refine_cameras``);
    as they are without corrections.

    Held-out cameras are not refined one by one (as in nerfacto), but they follow the frame the training
    cameras moved to together: the similarity that best maps the training cameras' positions before
    refinement onto those after is applied to them. Refinement is free to turn or shift the whole
    reconstruction a little; without this, held-out views would be scored from beside where the scene now is.
    """
    if model.images.pose_delta is None or len(train) == 0:
        return cameras
    with torch.no_grad():
        c2w = torch.as_tensor(cameras.c2w[train], dtype=torch.float64)
        corrected = correct_poses(c2w, model.images.pose_delta.detach().double().cpu()).numpy()
    out = cameras.c2w.copy()
    out[train] = corrected
    held = np.setdiff1d(np.arange(len(cameras)), train)
    if len(held) and len(train) >= 3:
        s, R, t = similarity_alignment(cameras.c2w[train, :, 3], corrected[:, :, 3])
        out[held, :, :3] = R @ cameras.c2w[held, :, :3]
        out[held, :, 3] = s * cameras.c2w[held, :, 3] @ R.T + t
    return cameras.replace(c2w=out)


def load_run(run: str | Path, checkpoint: str | Path | None = None, device: torch.device | str | None = None,
             render: dict | None = None) -> LoadedRun:
    """Open the run folder ``run`` with its latest checkpoint (or ``checkpoint``) on ``device`` (default auto).

    ``render``: values of the ``render`` config section that replace the run's own (``chunk_rays``).
    """
    folder = RunFolder(Path(run))
    if not folder.config.exists():
        raise UserError(f"{folder.path} is not a mip360 run (no config.yaml)",
                        hint="give the folder `mip360 train` wrote (--run), e.g. runs/<scene>")
    cfg = load_config(folder.config, outside_base="error")  # a run's config reaches no other file
    if render:
        cfg.render = dataclasses.replace(cfg.render, **render)
    if checkpoint is None:
        found = ckpt.list_checkpoints(folder.path)
        if not found:
            raise UserError(f"{folder.path} has no checkpoint yet",
                            hint=f"train it first: mip360 train DATA --run {folder.path}")
        checkpoint = found[-1][1]
    state = ckpt.load_checkpoint(Path(checkpoint))
    device = resolve_device(device or "auto") if not isinstance(device, torch.device) else device
    meta = read_cameras_json(folder.cameras, folder.path)
    model = build_model(cfg, device, len(meta.train))
    try:
        load_plain_state(model, state["model"])  # runs trained with train.compile=true too
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as e:
        raise UserError(f"checkpoint {checkpoint} does not fit the model of {folder.config}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    model.eval()
    return LoadedRun(folder.path, cfg, model, int(state["step"]), refined_cameras(model, meta.cameras, meta.train),
                     meta.transform, meta.train, meta.test,
                     meta.cache, device, state.get("cache_fingerprint"), Path(checkpoint), meta.image_source,
                     state.get("train_seconds"))
