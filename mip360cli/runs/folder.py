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

from ..config import CONFIG_HEADER
from ..core.errors import UserError
from ..core.files import refuse_foreign, temp_target

# What a run folder holds: the names mip360 writes at its top.
LAYOUT = ("config.yaml", "cameras.json", "checkpoints", "metrics.jsonl", "val", "tensorboard", "renders", "eval",
          "export", "camera_paths", ".mip360.lock")


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

    def is_run(self) -> bool:
        """Whether mip360 made this folder: its config.yaml starts with mip360's header, or it holds
        checkpoints."""
        try:
            with open(self.config, "rb") as f:
                if f.read(len(CONFIG_HEADER)).decode("utf-8", "replace") == CONFIG_HEADER:
                    return True
        except OSError:
            pass
        return self.checkpoints.is_dir() and any(p.name.startswith("step_") for p in self.checkpoints.iterdir())

    def check_for_training(self) -> None:
        """Refuse to train into a folder that is neither new, empty, a mip360 run, nor one that only a
        killed start of one left (nothing but the layout's names): training would write over its files."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"the run folder {self.path} is a file", hint="give --run a folder")
        if not self.path.is_dir() or self.is_run():
            return
        foreign = sorted(p.name for p in self.path.iterdir()
                         if p.name not in LAYOUT and temp_target(p.name) not in LAYOUT)
        if not foreign and self.config.exists():
            foreign = [self.config.name]  # a config.yaml that mip360 did not write
        refuse_foreign(self.path, foreign, "it is not a mip360 run folder, and training would write its files there",
                       hint="give --run a new folder (or an existing run of mip360)")
