"""The Python API: open a trained run and render, score or export it without the command line.

For notebooks, benchmark harnesses (nerfbaselines) and pipelines that start from a radiance field
(3D Gaussian splatting from its points)::

    import mip360cli

    run = mip360cli.open_run("runs/garden")       # the latest checkpoint, on the GPU when there is one
    cams = run.cameras                             # the input data's cameras and world (OpenCV axes)
    out = run.render(cams.c2w[0], cams.K[0], int(cams.width[0]), int(cams.height[0]))
    out["rgb"]                                     # (H, W, 3) float32 in [0, 1]
    out["depth"]                                   # (H, W) float32 z-depth in the input data's units
    run.evaluate()                                 # the held-out scores and their record, as `mip360 eval`
    run.export_points(points=200_000)              # a PLY, as `mip360 export` (RUN/export/points.ply)
    run.export_mesh(resolution=512, format="glb")  # a mesh, as `mip360 export --mesh` (RUN/export/mesh.glb)

Cameras are given as in the input data: camera-to-world (3, 4) with OpenCV axes (x right, y down,
z forward) in the input's world and units (``space="normalized"`` for mip360's normalized scene),
and pixel intrinsics K (3, 3) for the image size asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.errors import UserError
from .data.cameras import Cameras, transform_poses
from .eval.evaluate import evaluate
from .export.points import ExportSummary, PointOptions, export_points
from .runs.load import LoadedRun, load_run
from .runs.views import MAX_SIDE, render_image

DEPTHS = ("median", "mean", None)


def open_run(path: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
             chunk_rays: int | str | None = None) -> "Run":
    """Open the run folder ``path`` (made by ``mip360 train``) with its latest checkpoint, or ``checkpoint``.

    Args:
        device: auto (CUDA when present), cpu, cuda or cuda:N.
        chunk_rays: rays rendered at once (default: the run's ``render.chunk_rays``).
    Raises:
        UserError: not a run, no checkpoint, a damaged file (one message naming it).
    """
    render = {"chunk_rays": chunk_rays} if chunk_rays is not None else None
    return Run(load_run(Path(path), checkpoint, device, render))


class Run:
    """A trained run: its cameras in the input data's world, and rendering, scoring and export."""

    def __init__(self, loaded: LoadedRun):
        self.loaded = loaded
        inputs = transform_poses(np.linalg.inv(loaded.transform), loaded.cameras.c2w)
        self.cameras: Cameras = loaded.cameras.replace(c2w=inputs)
        """The run's cameras (training and held-out), c2w in the input data's world; K at the training size."""
        self.train: np.ndarray = loaded.train
        """Indices into :attr:`cameras` of the training views."""
        self.test: np.ndarray = loaded.test
        """Indices into :attr:`cameras` of the held-out views."""

    @property
    def path(self) -> Path:
        return self.loaded.run

    @property
    def step(self) -> int:
        """The training step of the checkpoint loaded."""
        return self.loaded.step

    @property
    def config(self):
        """The run's resolved :class:`~mip360cli.config.Config`."""
        return self.loaded.cfg

    def render(self, c2w: np.ndarray, K: np.ndarray, width: int, height: int, depth: str | None = "median",
               space: str = "input", appearance: str = "mean") -> dict[str, np.ndarray]:
        """Render one pinhole camera.

        Args:
            c2w: (3, 4) or (4, 4) camera-to-world, OpenCV axes; K: (3, 3) intrinsics in pixels.
            depth: ``median``, ``mean`` or None (no depth: faster).
            space: ``input`` (the input data's world and units) or ``normalized`` (mip360's scene).
            appearance: for a run trained with appearance codes: ``mean`` or a training image's name.
        Returns:
            ``rgb`` (H, W, 3) float32 in [0, 1], ``opacity`` (H, W) and, unless ``depth`` is None,
            ``depth`` (H, W) float32 z-depth in the units of ``space``.
        """
        c2w, K = np.asarray(c2w, np.float64), np.asarray(K, np.float64)
        if c2w.shape not in ((3, 4), (4, 4)) or K.shape != (3, 3) or not (np.isfinite(c2w).all() and
                                                                          np.isfinite(K).all()):
            raise UserError(f"render: c2w must be finite 3x4 or 4x4 and K finite 3x3, got {c2w.shape} and {K.shape}")
        if depth not in DEPTHS or space not in ("input", "normalized"):
            raise UserError(f"render: depth must be median, mean or None and space input or normalized, "
                            f"got {depth!r} and {space!r}")
        if not (1 <= int(width) <= MAX_SIDE and 1 <= int(height) <= MAX_SIDE):
            raise UserError(f"render: the image size must be from 1x1 to {MAX_SIDE}x{MAX_SIDE}, got {width}x{height}")
        pose = c2w[:3]
        if space == "input":
            pose = transform_poses(self.loaded.transform, pose[None])[0]
        lr = self.loaded
        out = render_image(lr.model, K, pose, None, int(width), int(height), lr.cfg.render.chunk_rays, lr.device,
                           depth=depth is not None, code=lr.appearance_code(appearance))
        result = {"rgb": np.clip(out["rgb"], 0, 1), "opacity": out["acc"]}
        if depth is not None:
            d = out["median_depth" if depth == "median" else "mean_depth"]
            result["depth"] = (d / lr.scale if space == "input" else d).astype(np.float32)
        return result

    def evaluate(self, split: str = "test", ratio: float | None = None) -> dict:
        """PSNR, SSIM and LPIPS (where it can) of the ``split`` views at ``ratio`` (default: the training ratio),
        as ``mip360 eval``, also written to RUN/eval/. Returns ``{"mean": {"psnr", "ssim", "lpips"},
        "per_image": [...], "protocol": {how they were made}, ...}``."""
        if split not in ("test", "train"):
            raise UserError(f"evaluate: split must be test or train, got {split!r}")
        return evaluate(self.loaded, split, ratio)

    def export_points(self, out: str | Path | None = None, **options) -> ExportSummary:
        """A coloured point cloud as ``mip360 export`` writes it (default RUN/export/points.ply).

        ``options`` are those of :class:`~mip360cli.export.points.PointOptions` (points, split, ratio,
        min_opacity, tolerance, neighbours, min_agree, bound, normals, normalized, seed).
        """
        try:
            opts = PointOptions(**options)
        except TypeError as e:
            raise UserError(f"export_points: {e}") from None
        return export_points(self.loaded, Path(out) if out else self.loaded.folder.export / "points.ply", opts)

    def export_mesh(self, out: str | Path | None = None, **options):
        """A coloured mesh as ``mip360 export --mesh`` writes it (default RUN/export/mesh.ply; needs the ``mesh``
        extra). ``options`` are those of :class:`~mip360cli.export.mesh.MeshOptions` (resolution, truncation,
        split, ratio, min_opacity, tolerance, neighbours, min_views, bound, components, format, normalized)."""
        from .export.mesh import MeshOptions, export_mesh

        try:
            opts = MeshOptions(**options)
        except TypeError as e:
            raise UserError(f"export_mesh: {e}") from None
        default = self.loaded.folder.export / f"mesh.{opts.format}"
        return export_mesh(self.loaded, Path(out) if out else default, opts)

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, step={self.step}, {len(self.train)} training and {len(self.test)} "
                f"held-out cameras, device={self.loaded.device})")
