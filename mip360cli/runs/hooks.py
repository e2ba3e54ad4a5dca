"""Hooks: what the trainer calls as it goes, so that it knows no viewer, logger or board.

A hook gets ``start`` once the model is set up (before the first step), then ``between_steps``
after every step, ``log`` every ``train.log_every`` steps, ``validation`` after each validation
render, ``checkpoint`` after each checkpoint, and ``close`` at the end (also on errors). Hooks run
in the first process only. The standard ones (metrics.jsonl, TensorBoard) are in ``train/hooks.py``;
a command hands in others (``mip360 train --viewer``: the live viewer of ``view/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.cameras import Cameras
from ..model.model import Mip360
from .folder import RunFolder


@dataclass
class TrainContext:
    """What a hook may use: the run, its config, the model being trained and the cameras it sees."""

    run: RunFolder
    cfg: Config
    model: Mip360
    device: torch.device
    cameras: Cameras
    """All cameras of the cache (normalized scene)."""
    train: np.ndarray
    """Indices of the training cameras."""
    transform: np.ndarray
    """(4, 4) input world -> normalized world."""
    start_step: int


class TrainHook:
    """The base of every hook: each method does nothing unless a hook overrides it."""

    def start(self, ctx: TrainContext) -> None:
        pass

    def between_steps(self, step: int) -> None:
        pass

    def log(self, step: int, record: dict[str, float]) -> None:
        pass

    def validation(self, step: int, psnr: float, panel: np.ndarray) -> None:
        pass

    def checkpoint(self, step: int, path: Path) -> None:
        pass

    def close(self) -> None:
        pass
