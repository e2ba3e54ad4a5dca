"""Rendering a camera path of a trained run into frames, depth maps and videos (``mip360 render``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core import distributed
from ..core.errors import UserError
from ..core.files import (MIB, atomic_write_text, files_below, process_lock, read_json_bounded, refuse_foreign,
                          temp_target)
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
    appearance: str = "mean"
    """The appearance code of a run trained with them: mean, or a training image's name."""

    def check(self) -> None:
        if self.depth not in DEPTHS:
            raise UserError(f"--depth {self.depth!r}: choose none, mean or median")
        if not 1 <= self.frames <= 100_000:
            raise UserError(f"--frames must be from 1 to 100000, got {self.frames}")
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
    code = loaded.appearance_code(opts.appearance)
    out = opts.out or loaded.folder.renders(Path(opts.path).stem if opts.path not in PATHS else opts.path)
    with contextlib.ExitStack() as stack:
        if env.is_main:  # one render per folder at a time; the lock names the one rendering
            folder = RenderFolder(out)
            folder.check()
            stack.enter_context(process_lock(out / LOCK, f"the render folder {out}"))
            key = render_key(loaded, views, opts.depth, opts.appearance if code is not None else None)
            folder.prepare(key, [v.name for v in views], opts.overwrite)
        return _render_into(loaded, views, out, opts, env, code)


def _render_into(loaded: LoadedRun, views: list[View], out: Path, opts: RenderOptions, env: distributed.DistEnv,
                 code=None) -> dict:
    distributed.barrier(env)
    mine = list(range(env.rank, len(views), env.world))
    todo = [views[i] for i in mine if not _frame_done(out, views[i].name, opts.depth)]
    if env.is_main:
        info(f"rendering {len(views)} frames of {views[0].width}x{views[0].height} ({opts.path}) into {out}"
             + (f"; {len(mine) - len(todo)} already there" if len(todo) < len(mine) else ""))
    _render_frames(loaded, todo, out, opts.depth, code)
    distributed.barrier(env)
    if not env.is_main:
        return {}
    result = {"out": out, "frames": len(views), "rendered": len(todo) * env.world}
    result.update(_colormaps_and_videos(out, [v.name for v in views], opts))
    return result


def _render_frames(loaded: LoadedRun, views: list[View], out: Path, depth: str, code=None) -> None:
    """rgb/NAME.png and (unless ``depth`` is none) depth/NAME.npy, in the input's units, of each view
    (``code``: the appearance code, or None)."""
    with progress_bar("rendering", len(views), "frames") as bar:
        for v in views:
            img = render_image(loaded.model, v.K, v.c2w, v.dist, v.width, v.height, loaded.cfg.render.chunk_rays,
                               loaded.device, depth=depth != "none", code=code)
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
LOCK = ".render.lock"
VIDEOS = ("rgb.mp4", "depth.mp4", "rgb_depth.mp4")


def render_key(loaded: LoadedRun, views: list[View], depth: str, appearance: str | None = None) -> dict:
    """What the frames of a render depend on: the cameras, the checkpoint, the depth kind and the appearance
    code (None for a model without codes: the key of earlier versions)."""
    h = hashlib.sha256()
    for v in views:
        for a in (v.K, v.c2w, v.dist if v.dist is not None else np.zeros(5), np.array([v.width, v.height])):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
    st = loaded.checkpoint.stat() if loaded.checkpoint is not None and loaded.checkpoint.exists() else None
    return {"views": h.hexdigest(), "frames": len(views), "size": [views[0].width, views[0].height],
            "step": loaded.step, "checkpoint": [loaded.checkpoint.name, st.st_size, st.st_mtime_ns] if st else None,
            "depth": depth, **({"appearance": appearance} if appearance is not None else {})}


class RenderFolder:
    """An output folder of ``mip360 render`` and what in it mip360 wrote.

    ``render.json`` records what the frames were made for (:func:`render_key`) and the names of the
    frames; the files mip360 writes are those frames (``rgb/NAME.png``, ``depth/NAME.npy|png``), the
    three videos, ``render.json``, the lock and the temporary files of killed writes. Anything else
    (the user's own files) is never deleted or overwritten: a folder holding such files is refused.
    """

    def __init__(self, path: Path):
        self.path = path
        self.manifest_path = path / MANIFEST

    def read_manifest(self) -> dict | None:
        """The manifest, or None when there is none; {} when it is damaged (the frames are then stale)."""
        if not self.manifest_path.exists():
            return None
        try:
            data = read_json_bounded(self.manifest_path, "render manifest", 64 * MIB)
        except UserError:
            return {}
        return data if isinstance(data, dict) else {}

    def owned(self, manifest: dict | None) -> Callable[[Path], bool]:
        """Whether a file (relative path) is one mip360 wrote, given the folder's manifest."""
        names = (manifest or {}).get("names")
        # no manifest, or one without the frames' names (an earlier mip360 did not record them): no frame
        # here is known to be mip360's, only the lock and the manifest of a render that died at once
        known = set(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else set()

        def frame(rel: Path, suffixes: tuple[str, ...]) -> bool:
            return rel.suffix in suffixes and rel.stem in known

        def owned(rel: Path) -> bool:
            target = temp_target(rel.name)
            if target is not None:
                rel = rel.with_name(target)
            if len(rel.parts) == 1:
                return rel.name in (MANIFEST, LOCK, *(VIDEOS if manifest else ()))
            if len(rel.parts) == 2 and rel.parts[0] == "rgb":
                return frame(rel, (".png",))
            return len(rel.parts) == 2 and rel.parts[0] == "depth" and frame(rel, (".npy", ".png"))

        return owned

    def check(self) -> None:
        """Refuse a folder that holds files mip360 did not write (before anything is written into it)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder", hint="give a folder for the frames")
        if self.path.is_dir():
            manifest = self.read_manifest()
            owned = self.owned(manifest)
            foreign = [f for f in files_below(self.path) if not owned(f)]
            if foreign and manifest and "names" not in manifest:
                raise UserError(f"{self.path} was rendered by an earlier mip360, which did not record the names of "
                                "the files it wrote: mip360 does not delete them",
                                hint="render into another folder (--out), or delete its frames and videos yourself")
            refuse_foreign(self.path, foreign, "mip360 never deletes or overwrites them",
                           hint="render into another folder (--out), or move those files away")

    def prepare(self, key: dict, names: list[str], overwrite: bool) -> None:
        """Remove the temporary files of killed writes and the frames made for another key (or all of them
        with ``overwrite``), and record the key and the frames' names. Call it holding the folder's lock,
        after :meth:`check`.

        Frames already written are reused (an interrupted render resumes) only when they were made for
        exactly this key: never mixed from two orbits, sizes or checkpoints.
        """
        self.check()  # again, under the lock
        old, new = self.read_manifest(), {**key, "names": names}
        files = files_below(self.path)
        leftovers = [f for f in files if temp_target(f.name) is not None]
        frames = [f for f in files if f not in leftovers and f.name not in (MANIFEST, LOCK)]
        stale = frames if overwrite or old != new else []
        if stale and not overwrite:
            what = sorted(k for k in new if (old or {}).get(k) != new[k])
            info(f"the frames in {self.path} were made with another " + (", ".join(what) if old else "render")
                 + ": rendering them again")
        for f in leftovers + stale:
            (self.path / f).unlink(missing_ok=True)
        if old != new:
            atomic_write_text(self.manifest_path, json.dumps(new, indent=1) + "\n")


def _frame_done(out: Path, name: str, depth: str) -> bool:
    return (out / "rgb" / f"{name}.png").exists() and (depth == "none" or (out / "depth" / f"{name}.npy").exists())
