"""TensorBoard logs of a training run (RUN/tensorboard/), beside metrics.jsonl."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..core.errors import UserError


def tensorboard_enabled(setting: str | bool) -> bool:
    """``train.tensorboard``: true, false, or auto (when the tensorboard package is installed)."""
    if setting == "auto":
        return importlib.util.find_spec("tensorboard") is not None
    if setting is True and importlib.util.find_spec("tensorboard") is None:
        raise UserError("train.tensorboard=true needs the tensorboard package", hint="pip install tensorboard")
    return bool(setting)


class Board:
    """TensorBoard logs of a run (RUN/tensorboard/), or nothing when ``folder`` is None.

    A resumed run purges the events after its checkpoint's step, as metrics.jsonl drops
    its lines: the replayed steps are not logged twice.
    """

    def __init__(self, folder: Path | None, start_step: int):
        self.writer = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder), purge_step=start_step + 1 if start_step else None)

    def scalars(self, step: int, record: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in record.items():
                self.writer.add_scalar(f"train/{k}", v, step)

    def validation(self, step: int, psnr: float, panel: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.add_scalar("val/psnr", psnr, step)
            self.writer.add_image("val/photo_render_depth", panel, step, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
