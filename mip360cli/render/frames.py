"""Rendering a camera path of a trained run into frames, depth maps and videos (``mip360 render``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import distributed
from ..core.errors import UserError
from ..core.files import atomic_write_text
from ..core.progress import info, progress_bar
from ..data.images import read_image
from ..runs.camera_paths import load_path_file
from ..runs.load import LoadedRun
from ..runs.views import View, render_image
from . import paths as path_mod
from ..runs.writers import depth_range, depth_to_color, to_uint8, write_npy, write_png, write_video

PATHS = ("ellipse", "spiral", "interp", "test", "train")
DEPTHS = ("none", "mean", "median")


@dataclass
class RenderOptions:
    """What ``mip360 render`` makes (the command's options, same names)."""

    path: str = "ellipse"
    """ellipse | spiral | interp | test | train | a camera-path .json file."""
    frames: int = 120
    """Frames of a generated path."""
    ratio: float | None = None
    """Image scale against the original photos (None: the training ratio)."""
    depth: str = "median"
    """none | mean | median."""
    video: bool = True
    fps: float = 30.0
    out: Path | None = None
    """Output folder (None: RUN/renders/<path>)."""
    overwrite: bool = False
    """Render frames already on disk again."""

    def check(self) -> None:
        if self.depth not in DEPTHS:
            raise UserError(f"--depth {self.depth!r}: choose none, mean or median")
        if self.frames < 1:
            raise UserError(f"--frames must be >= 1, got {self.frames}")
        if not (self.fps > 0 and self.fps <= 1000):
            raise UserError(f"--fps {self.fps}: must be > 0 (and at most 1000)")


def path_views(loaded: LoadedRun, path: str, frames: int, ratio: float | None) -> list[View]:
    """The cameras of a named path or a camera-path file, at ``ratio`` of the original images."""
    if path in ("test", "train"):
        return loaded.views(path, ratio)
    cams = loaded.cameras
    ref = cams.select(loaded.train[:1]).scaled(loaded.image_scale(ratio))
    K, size = ref.K[0], (int(ref.width[0]), int(ref.height[0]))
    train_c2w = cams.c2w[loaded.train]
    if path == "ellipse":
        poses = path_mod.ellipse_path(train_c2w, frames)
    elif path == "spiral":
        poses = path_mod.spiral_path(train_c2w, frames)
    elif path == "interp":
        poses = path_mod.interp_path(train_c2w, frames)
    elif path.endswith(".json") or Path(path).exists():
        poses, Ks, size = load_path_file(Path(path), loaded.transform, size, K)
        return [View(f"{i:05d}", Ks[i], poses[i], None, *size) for i in range(len(poses))]
    else:
        raise UserError(f"unknown path '{path}'", hint=f"use one of {', '.join(PATHS)}, or a camera-path .json file")
    return [View(f"{i:05d}", K, poses[i], None, *size) for i in range(len(poses))]


def render_path(loaded: LoadedRun, opts: RenderOptions, env: distributed.DistEnv | None = None) -> dict:
    """Render a path into ``opts.out`` (default RUN/renders/<path>): frames, depth, videos.

    Frames already on disk are kept (``opts.overwrite`` renders them again), so an
    interrupted render resumes. With several processes, rank r renders frames
    r, r + N, ...; rank 0 then writes the depth colormaps (one range for the
    whole path) and the videos.
    """
    env = env or distributed.DistEnv()
    opts.check()
    views = path_views(loaded, opts.path, opts.frames, opts.ratio)
    out = opts.out or loaded.folder.renders(Path(opts.path).stem if opts.path not in PATHS else opts.path)
    if env.is_main:
        _forget_stale_frames(out, render_key(loaded, views, opts.depth), opts.overwrite)
    distributed.barrier(env)
    mine = list(range(env.rank, len(views), env.world))
    todo = [views[i] for i in mine if not _frame_done(out, views[i].name, opts.depth)]
    if env.is_main:
        info(f"rendering {len(views)} frames of {views[0].width}x{views[0].height} ({opts.path}) into {out}"
             + (f"; {len(mine) - len(todo)} already there" if len(todo) < len(mine) else ""))
    _render_frames(loaded, todo, out, opts.depth)
    distributed.barrier(env)
    if not env.is_main:
        return {}
    result = {"out": out, "frames": len(views), "rendered": len(todo) * env.world}
    result.update(_colormaps_and_videos(out, [v.name for v in views], opts))
    return result


def _render_frames(loaded: LoadedRun, views: list[View], out: Path, depth: str) -> None:
    """rgb/NAME.png and (unless ``depth`` is none) depth/NAME.npy, in the input's units, of each view."""
    with progress_bar("rendering", len(views), "frames") as bar:
        for v in views:
            img = render_image(loaded.model, v.K, v.c2w, v.dist, v.width, v.height, loaded.cfg.render.chunk_rays,
                               loaded.device, depth=depth != "none")
            if depth != "none":
                d = img["median_depth" if depth == "median" else "mean_depth"] / loaded.scale
                if not loaded.cfg.model.opaque_background:
                    d = np.where(img["acc"] >= 0.5, d, np.nan)  # no surface there: NaN, black in the colormap
                write_npy(out / "depth" / f"{v.name}.npy", d.astype(np.float32))
            write_png(out / "rgb" / f"{v.name}.png", to_uint8(img["rgb"]))
            bar.advance()


def _colormaps_and_videos(out: Path, names: list[str], opts: RenderOptions) -> dict:
    """depth/NAME.png over one range for the whole path, and the videos asked for."""
    result = {}
    with_depth = opts.depth != "none"
    if with_depth:
        depth_of = lambda n: np.load(out / "depth" / f"{n}.npy", allow_pickle=False)  # noqa: E731 - never unpickles
        lo, hi = depth_range(depth_of(n) for n in names)
        for n in names:
            write_png(out / "depth" / f"{n}.png", depth_to_color(depth_of(n), lo, hi))
        result["depth_range"] = (lo, hi)
    if opts.video:
        rgb = lambda: (read_image(out / "rgb" / f"{n}.png") for n in names)  # noqa: E731
        result["videos"] = [out / "rgb.mp4"]
        write_video(out / "rgb.mp4", rgb(), opts.fps)
        if with_depth:
            dep = lambda: (read_image(out / "depth" / f"{n}.png") for n in names)  # noqa: E731
            write_video(out / "depth.mp4", dep(), opts.fps)
            write_video(out / "rgb_depth.mp4", (np.concatenate([a, b], 1) for a, b in zip(rgb(), dep())), opts.fps)
            result["videos"] += [out / "depth.mp4", out / "rgb_depth.mp4"]
    return result


MANIFEST = "render.json"


def render_key(loaded: LoadedRun, views: list[View], depth: str) -> dict:
    """What the frames of a render depend on: the cameras, the checkpoint and the depth kind."""
    h = hashlib.sha256()
    for v in views:
        for a in (v.K, v.c2w, v.dist if v.dist is not None else np.zeros(5), np.array([v.width, v.height])):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
    st = loaded.checkpoint.stat() if loaded.checkpoint is not None and loaded.checkpoint.exists() else None
    return {"views": h.hexdigest(), "frames": len(views), "size": [views[0].width, views[0].height],
            "step": loaded.step, "checkpoint": [loaded.checkpoint.name, st.st_size, st.st_mtime_ns] if st else None,
            "depth": depth}


def _forget_stale_frames(out: Path, key: dict, overwrite: bool) -> None:
    """Delete frames and videos in ``out`` made for other cameras, another checkpoint or depth; record ``key``.

    Frames already written are reused (an interrupted render resumes) only when they
    were made for exactly this key: never mixed from two orbits, sizes or checkpoints.
    """
    manifest = out / MANIFEST
    old = None
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except ValueError:
            old = {}
    existing = [p for sub in ("rgb", "depth") if (out / sub).is_dir() for p in (out / sub).iterdir()]
    existing += [p for p in out.glob("*.mp4")] if out.is_dir() else []
    if existing and (overwrite or old != key):
        if not overwrite:
            what = sorted(k for k in key if (old or {}).get(k) != key[k])
            info(f"the frames in {out} were made with another " + (", ".join(what) if old else "render")
                 + ": rendering them again")
        for p in existing:
            p.unlink(missing_ok=True)
    if old != key:
        atomic_write_text(manifest, json.dumps(key, indent=1) + "\n")


def _frame_done(out: Path, name: str, depth: str) -> bool:
    return (out / "rgb" / f"{name}.png").exists() and (depth == "none" or (out / "depth" / f"{name}.npy").exists())
