"""Point-cloud export: median depth of the training views, unprojected, filtered and written as PLY.

A pixel becomes a point when the model is opaque there (accumulated weight at
least ``min_opacity``), its median depth agrees with what neighbouring views
see at the point's projection (relative difference under ``tolerance`` in at
least ``min_agree`` of ``neighbours`` views), and it lies within ``bound`` of
the normalized scene's center (the box holding the cameras, |x| <= 1, by
default: beyond it the scene is contracted and its depth is coarse). Points
are written in the input data's world coordinates and units (those of its
COLMAP model, LLFF poses or transforms.json) unless ``normalized`` is asked.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import (atomic_path, ensure_writable_dir, files_below, process_lock, refuse_foreign,
                          temp_target)
from ..core.progress import info, progress_bar
from ..runs.load import LoadedRun
from ..runs.views import View, render_image


PLY_COMMENT = "comment written by mip360 export"
"""In the header of every PLY mip360 writes: the one file ``--out`` may replace."""


@dataclass
class DepthOptions:
    """What both exports take from the depth maps (the command's options, same names)."""

    split: str = "train"
    """Views to take depth from: train | test | all."""
    ratio: float | None = None
    """Image scale against the original photos (None: the training ratio)."""
    min_opacity: float = 0.9
    tolerance: float = 0.01
    neighbours: int = 4
    bound: float = 1.0
    normalized: bool = False


@dataclass
class PointOptions(DepthOptions):
    """How ``mip360 export`` turns depth maps into points."""

    points: int = 1_000_000
    """At most this many points (a random subset)."""
    min_agree: int = 1
    normals: bool = False
    seed: int = 0

    def check(self) -> None:
        """One UserError for the first value out of its range."""
        checks = [
            *depth_checks(self),
            (1 <= self.points <= 10**9, f"--points must be >= 1 (and at most 1e9), got {self.points}"),
            (0 <= self.min_agree <= 64, f"--min-agree must be from 0 (no check) to 64, got {self.min_agree}"),
            (self.bound >= 0, f"--bound must be >= 0 (0: no limit), got {self.bound}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


def depth_checks(opts: DepthOptions) -> list[tuple[bool, str]]:
    """The range checks of the options both exports share (split, ratio, opacity, tolerance, neighbours):
    (ok, message) pairs."""
    return [
        (opts.split in ("train", "test", "all"), f"--split {opts.split!r}: choose train, test or all"),
        (opts.ratio is None or 0 < opts.ratio <= 4, f"--ratio must be in (0, 4], got {opts.ratio}"),
        (0 <= opts.min_opacity <= 1, f"--min-opacity must be in [0, 1], got {opts.min_opacity}"),
        (opts.tolerance > 0, f"--tolerance must be > 0, got {opts.tolerance}"),
        (1 <= opts.neighbours <= 64, f"--neighbours must be from 1 to 64, got {opts.neighbours}"),
    ]


def export_views(loaded: LoadedRun, split: str, ratio: float | None) -> list[View]:
    """The views an export takes depth from: the ``split`` (train, test, or all: both, when any is held
    out) at ``ratio``."""
    views: list[View] = []
    for part in (("train", "test") if split == "all" else (split,)):
        if part == "test" and split == "all" and len(loaded.test) == 0:
            continue
        views += loaded.views(part, ratio)
    return views


@dataclass
class ExportSummary:
    path: Path
    points: int
    candidates: int
    views: int
    frame: str
    dropped: int = 0
    """Opaque pixels dropped as floaters (depth not confirmed by neighbouring views)."""


def unproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points of a z-depth map: (H, W) depth, (3, 3) K, (3, 4) camera-to-world -> (H, W, 3).

    Pixel centers at +0.5, OpenCV axes; no lens distortion (export views are pinhole).

    Example:
        >>> K = np.array([[2.0, 0, 1], [0, 2, 1], [0, 0, 1]])
        >>> unproject(np.full((2, 2), 4.0), K, np.eye(3, 4))[0, 0].tolist()
        [-1.0, -1.0, 4.0]
    """
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    cam = np.stack([x, y, np.ones_like(x)], -1) * depth[..., None]
    return cam @ c2w[:, :3].T + c2w[:, 3]


def project(points: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v, continuous, centers at +0.5) and z-depth of (N, 3) world points in a camera."""
    R, t = c2w[:, :3], c2w[:, 3]
    cam = (points - t) @ R  # world -> camera: R^T (p - t)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * cam[:, 0] / z + K[0, 1] * cam[:, 1] / z + K[0, 2]
        v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    return u, v, z


def depth_normals(points: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) of a grid of unprojected points (H, W >= 2), by central differences
    (one-sided at the borders), facing the camera."""
    n = np.cross(np.gradient(points, axis=0), np.gradient(points, axis=1))
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 0, n / np.maximum(norm, 1e-12), 0.0)
    to_camera = c2w[:, 3] - points
    flip = (n * to_camera).sum(-1, keepdims=True) < 0
    return np.where(flip, -n, n)


def frame_comment(normalized: bool) -> str:
    """The PLY comment that says which frame a file mip360 wrote is in (``mip360 view --show`` reads it)."""
    return f"comment mip360 frame {'normalized' if normalized else 'input'}"


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray, normals: np.ndarray | None = None,
              normalized: bool = False) -> None:
    """A binary little-endian PLY of (N, 3) float points, (N, 3) uint8 colors and (N, 3) normals
    (zeros when None: 3D Gaussian splatting's reader expects the fields), in the input world or (``normalized``)
    the normalized scene. Written atomically."""
    n = len(xyz)
    normals = np.zeros((n, 3), np.float32) if normals is None else normals
    rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"),
                             ("nz", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, k in enumerate("xyz"):
        rec[k] = xyz[:, i]
        rec["n" + k] = normals[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        rec[k] = rgb[:, i]
    header = (f"ply\nformat binary_little_endian 1.0\n{PLY_COMMENT}\n{frame_comment(normalized)}\n"
              f"element vertex {n}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property float nx\nproperty float ny\nproperty float nz\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(rec.tobytes())


def read_ply(path: Path) -> dict[str, np.ndarray]:
    """Read a binary little-endian PLY vertex list as written by :func:`write_ply`: field -> (N,) array."""
    types = {"float": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1", "int": "<i4", "float32": "<f4"}
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise UserError(f"{path} is not a PLY file")
        fields, n = [], 0
        while True:
            line = f.readline().decode("ascii", "replace").strip()
            if line.startswith("format") and "binary_little_endian" not in line:
                raise UserError(f"{path}: only binary little-endian PLY is read here")
            if line.startswith("element vertex"):
                n = int(line.split()[-1])
            elif line.startswith("property"):
                _, tp, name = line.split()
                fields.append((name, types[tp]))
            elif line == "end_header" or not line:
                break
        data = np.frombuffer(f.read(), dtype=fields, count=n)
    return {k: data[k] for k, _ in fields}


def neighbours_of(centers: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each camera's ``k`` nearest other cameras (by center distance)."""
    d = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    k = min(k, len(centers) - 1)
    return np.argsort(d, axis=1)[:, :k]


def export_points(loaded: LoadedRun, out: Path, opts: PointOptions | None = None) -> ExportSummary:
    """Render the views of ``opts.split``, turn their pixels into points, filter and write ``out`` (PLY).

    Depth maps go to a scratch folder beside ``out`` (removed at the end), so memory holds
    one view and its neighbours at a time, whatever the number of views.
    """
    opts = opts or PointOptions()
    opts.check()
    views = export_views(loaded, opts.split, opts.ratio)
    if len(views) < 2 and opts.min_agree > 0:
        raise UserError(f"the {opts.split} split has {len(views)} view(s); the depth check needs at least 2",
                        hint="use --split all, or --min-agree 0 to keep unchecked points")
    check_output(out)
    with locked_scratch(out) as scratch:
        xyz, rgb, nrm, candidates, dropped = _points(loaded, views, scratch, opts)
        write_ply(out, xyz.astype(np.float32), rgb, None if nrm is None else nrm.astype(np.float32),
                  opts.normalized)
    frame = ("the normalized scene" if opts.normalized
             else "the input world: the dataset's own coordinates and units")
    info(f"{len(xyz):,} points of {candidates:,} that passed the filters, from {len(views)} views; dropped as "
         f"floaters: {dropped:,} opaque pixels seen at their depth by fewer than {opts.min_agree + 1} views -> {out}")
    return ExportSummary(out, len(xyz), candidates, len(views), frame, dropped)


def render_depth_maps(loaded: LoadedRun, views: list[View], scratch: "Scratch") -> None:
    """Render each view's median depth, opacity and colour into ``scratch`` (view i as ``i.npz``)."""
    with progress_bar("rendering depth", len(views), "views") as bar:
        for i, view in enumerate(views):
            r = render_image(loaded.model, view.K, view.c2w, None, view.width, view.height,
                             loaded.cfg.render.chunk_rays, loaded.device)
            # 9 bytes a pixel on disk: colours as written to the PLY, opacity only compared to a threshold
            scratch.save(i, rgb=np.round(np.clip(r["rgb"], 0, 1) * 255).astype(np.uint8),
                         acc=r["acc"].astype(np.float16), depth=r["median_depth"].astype(np.float32))
            bar.advance(1)


def _points(loaded: LoadedRun, views: list[View], scratch: "Scratch", opts: PointOptions):
    """Depth maps of ``views`` into ``scratch``, then the points that pass the filters, in the output frame:
    xyz (N, 3), rgb (N, 3) uint8, normals (N, 3) or None, how many passed before the subset, and how many
    opaque pixels were dropped as floaters (their depth not confirmed by enough views)."""
    render_depth_maps(loaded, views, scratch)
    per_view = -(-2 * opts.points // len(views))  # a bounded random share of each view's points
    rng = np.random.default_rng(opts.seed)
    kept_xyz, kept_rgb, kept_n, candidates, dropped = [], [], [], 0, 0
    with progress_bar("filtering points", len(views), "views") as bar:
        for i, view, d, xyz, idx, opaque in confirmed_pixels(views, scratch, loaded.cfg.data.far, opts):
            candidates += len(idx)
            dropped += opaque - len(idx)
            if len(idx) > per_view:
                idx = idx[rng.choice(len(idx), per_view, replace=False)]
            kept_xyz.append(xyz.reshape(-1, 3)[idx])
            kept_rgb.append(d["rgb"].reshape(-1, 3)[idx])
            if opts.normals:
                kept_n.append(depth_normals(xyz, view.c2w).reshape(-1, 3)[idx])
            bar.advance(1)
    xyz = np.concatenate(kept_xyz) if kept_xyz else np.zeros((0, 3))
    if len(xyz) == 0:
        raise UserError("no point passed the filters", hint="lower --min-opacity, raise --tolerance, or "
                                                            "check that the run is trained (mip360 eval)")
    rgb = np.concatenate(kept_rgb)
    nrm = np.concatenate(kept_n) if opts.normals else None
    if len(xyz) > opts.points:
        pick = np.sort(rng.choice(len(xyz), opts.points, replace=False))
        xyz, rgb = xyz[pick], rgb[pick]
        nrm = nrm[pick] if nrm is not None else None
    if not opts.normalized:  # back to the input world: p = T^-1 [p_n, 1]
        inv = np.linalg.inv(loaded.transform)
        xyz = xyz @ inv[:3, :3].T + inv[:3, 3]
        if nrm is not None:
            nrm = nrm @ np.linalg.inv(inv[:3, :3])  # normals transform by the inverse transpose
            nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
    return xyz, rgb, nrm, candidates, dropped


def confirmed_pixels(views: list[View], scratch: "Scratch", far: float, opts: PointOptions):
    """For each view, with its depth maps in ``scratch``: ``(i, view, depth data, points (H, W, 3), flat indices
    of the pixels its neighbours confirm, number of opaque pixels within the bound)``
    (:func:`agreeing_pixels`)."""
    near_views = neighbours_of(np.array([v.c2w[:, 3] for v in views]), opts.neighbours)
    for i, view in enumerate(views):
        d = scratch.load(i)
        xyz = unproject(d["depth"], view.K, view.c2w)
        idx, opaque = agreeing_pixels(xyz, d, [(views[j], scratch.load(int(j))) for j in near_views[i]], far, opts)
        yield i, view, d, xyz, idx, opaque


def agreeing_pixels(xyz: np.ndarray, d, neighbours: list, far: float, opts: PointOptions) -> tuple[np.ndarray, int]:
    """Flat indices of a view's pixels (points ``xyz`` (H, W, 3)) that are opaque, within the bound, and seen
    at the same depth by at least ``min_agree`` of the ``neighbours`` ((View, depth data) pairs), and the
    number of opaque pixels within the bound (those not returned are floaters: no other view confirms them)."""
    depth, acc = d["depth"], d["acc"]
    mask = (acc >= np.float16(opts.min_opacity)) & (depth < 0.999 * far)
    if opts.bound > 0:
        mask &= np.abs(xyz).max(-1) <= opts.bound
    idx = np.flatnonzero(mask)
    pts = xyz.reshape(-1, 3)[idx]
    agree = np.zeros(len(idx), int)
    for view, nb in neighbours:
        u, v, z = project(pts, view.K, view.c2w)
        h, w = nb["depth"].shape
        inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ui = np.clip(np.nan_to_num(u).astype(int), 0, w - 1)
        vi = np.clip(np.nan_to_num(v).astype(int), 0, h - 1)
        agree += inside & (np.abs(nb["depth"][vi, ui] - z) <= opts.tolerance * np.maximum(z, 1e-9))
    return idx[agree >= min(opts.min_agree, len(neighbours))], len(idx)


def check_output(out: Path) -> None:
    """The PLY ``out`` may be written: not a folder, and not a file that mip360 did not write."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder", hint=f"give the PLY file to write, e.g. {out / 'points.ply'}")
    if out.exists():
        try:
            with open(out, "rb") as f:
                head = f.read(256)
        except OSError as e:
            raise UserError(f"cannot read {out} ({e.strerror}): mip360 overwrites only a PLY it wrote") from None
        if PLY_COMMENT.encode() not in head:
            refuse_foreign(out.parent, [out.name], "mip360 overwrites only a point cloud it wrote",
                           hint="choose another --out, or move that file away")


@contextlib.contextmanager
def locked_scratch(out: Path):
    """The export's lock on ``out`` (one export a file) and its scratch folder of depth maps beside it, removed
    at the end whatever happens."""
    with process_lock(out.parent / f".{out.name}.lock", f"the export {out}"):
        scratch = Scratch(out.parent / f".{out.name}.views")
        try:
            yield scratch
        finally:
            scratch.remove()


class Scratch:
    """The depth maps of an export, one ``.npz`` a view, in a folder beside the output; what a killed
    export left there is removed first (only its own files: anything else stops the export)."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} is in the way of the export's scratch folder", hint="move it away")
        if path.is_dir():
            foreign = [f for f in files_below(path) if not self._ours(f.name)]
            refuse_foreign(path, foreign, "it is the export's scratch folder", hint="move those files away")
            for f in path.iterdir():
                f.unlink()
        ensure_writable_dir(path)

    @staticmethod
    def _ours(name: str) -> bool:
        return re.fullmatch(r"\d+\.npz", temp_target(name) or name) is not None

    def save(self, i: int, **arrays: np.ndarray) -> None:
        with atomic_path(self.path / f"{i}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def load(self, i: int):
        return np.load(self.path / f"{i}.npz", allow_pickle=False)

    def remove(self) -> None:
        if self.path.is_dir():
            for f in self.path.iterdir():
                if self._ours(f.name):
                    f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()
