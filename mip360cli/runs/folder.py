"""The layout of a run folder: one place that names its files.

::

    RUN/config.yaml          the resolved config the run uses
    RUN/cameras.json         normalized cameras, split, input-to-normalized transform (cameras_file.py)
    RUN/checkpoints/         step_NNNNNNN.pt (checkpoints.py)
    RUN/metrics.jsonl        one JSON record per logged step (metrics_log.py)
    RUN/val/                 validation panels
    RUN/tensorboard/         TensorBoard events
    RUN/renders/<path>/      mip360 render
    RUN/eval/                mip360 eval
    RUN/export/              mip360 export
    RUN/camera_paths/        camera paths saved by the viewer (camera_paths.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """The paths of the run folder ``path`` (nothing is read or created here)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def cameras(self) -> Path:
        return self.path / "cameras.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def val(self) -> Path:
        return self.path / "val"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def camera_paths(self) -> Path:
        return self.path / "camera_paths"

    @property
    def lock(self) -> Path:
        """Held by the one process that trains this run."""
        return self.path / ".mip360.lock"

    def renders(self, name: str) -> Path:
        return self.path / "renders" / name
