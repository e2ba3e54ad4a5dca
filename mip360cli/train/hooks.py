"""The standard training hooks (:class:`~mip360cli.runs.hooks.TrainHook`): metrics.jsonl and TensorBoard.

A command hands in others (``mip360 train --viewer``: the live viewer, in ``view/``).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..config import Config
from ..core.errors import UserError
from ..runs.hooks import TrainContext, TrainHook
from ..runs.metrics_log import MetricsLog, truncate_metrics


class MetricsHook(TrainHook):
    """RUN/metrics.jsonl: a record a log (loss terms, PSNR, lr, rays/s) and one per validation."""

    def __init__(self) -> None:
        self.log_file: MetricsLog | None = None

    def start(self, ctx: TrainContext) -> None:
        truncate_metrics(ctx.run.metrics, ctx.start_step)  # the part a resume replays is logged again
        self.log_file = MetricsLog(ctx.run.metrics)

    def log(self, step: int, record: dict[str, float]) -> None:
        self.log_file.append(step, record)

    def validation(self, step: int, psnr: float, panel: np.ndarray) -> None:
        self.log_file.append(step, {"val_psnr": psnr})

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()


def tensorboard_enabled(setting: str | bool) -> bool:
    """``train.tensorboard``: true, false, or auto (when the tensorboard package is installed)."""
    if setting == "auto":
        return importlib.util.find_spec("tensorboard") is not None
    if setting is True and importlib.util.find_spec("tensorboard") is None:
        raise UserError("train.tensorboard=true needs the tensorboard package", hint="pip install tensorboard")
    return bool(setting)


class TensorBoardHook(TrainHook):
    """TensorBoard logs of a run (RUN/tensorboard/): the logged figures and the validation panel.

    A resumed run purges the events after its checkpoint's step, as metrics.jsonl drops its
    lines: the replayed steps are not logged twice.
    """

    def __init__(self) -> None:
        self.writer = None

    def start(self, ctx: TrainContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(ctx.run.tensorboard), purge_step=ctx.start_step + 1 if ctx.start_step else None)

    def log(self, step: int, record: dict[str, float]) -> None:
        for k, v in record.items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def validation(self, step: int, psnr: float, panel: np.ndarray) -> None:
        self.writer.add_scalar("val/psnr", psnr, step)
        self.writer.add_image("val/photo_render_depth", panel, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def standard_hooks(cfg: Config) -> list[TrainHook]:
    """The hooks every training has: metrics.jsonl, and TensorBoard as ``train.tensorboard`` says."""
    return [MetricsHook()] + ([TensorBoardHook()] if tensorboard_enabled(cfg.train.tensorboard) else [])
