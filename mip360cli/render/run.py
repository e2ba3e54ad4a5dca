"""Render paths and evaluate held-out views of a trained run."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..config import Config, config_hash, load_config
from ..data.cache import RayCache
from ..data.cameras import Cameras, pixel_rays
from ..data.images import read_image, resize_area
from ..core.errors import UserError
from ..eval import metrics
from ..core.files import atomic_write_text
from ..core.device import compile_enabled, mlp_dtype
from ..model.model import Mip360, load_plain_state, render_rays
from ..core.progress import info, progress_bar
from ..train import checkpoint as ckpt
from ..core import distributed
from . import paths as path_mod
from .writers import depth_range, depth_to_color, to_uint8, write_npy, write_png, write_video

PATHS = ("ellipse", "spiral", "interp", "test", "train")


@dataclass
class LoadedRun:
    """A trained run ready to render: its config, model, cameras (normalized, at the cache's resolution)."""

    run: Path
    cfg: Config
    model: Mip360
    step: int
    cameras: Cameras
    transform: np.ndarray
    train: np.ndarray
    test: np.ndarray
    cache_path: Path | None
    device: torch.device
    cache_fingerprint: str | None = None
    """The fingerprint of the cache the checkpoint was trained on (its held-out photos are only valid then)."""
    checkpoint: Path | None = None

    @property
    def scale(self) -> float:
        return float(np.linalg.norm(self.transform[0, :3]))


def load_run(run: str | Path, checkpoint: str | Path | None = None, device: torch.device | None = None
             ) -> LoadedRun:
    run = Path(run)
    if not (run / "config.yaml").exists():
        raise UserError(f"{run} is not a mip360 run (no config.yaml)",
                        hint="give the folder `mip360 train` wrote (--run), e.g. runs/<scene>")
    cfg = load_config(run / "config.yaml", outside_base="error")  # a run's config reaches no other file
    if checkpoint is None:
        found = ckpt.list_checkpoints(run)
        if not found:
            raise UserError(f"{run} has no checkpoint yet", hint=f"train it first: mip360 train DATA --run {run}")
        checkpoint = found[-1][1]
    state = ckpt.load_checkpoint(Path(checkpoint))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Mip360.from_config(cfg.model, cfg.data)
    try:
        load_plain_state(model, state["model"])  # runs trained with train.compile=true too
    except RuntimeError as e:
        raise UserError(f"checkpoint {checkpoint} does not fit the model of {run / 'config.yaml'}: "
                        f"{str(e).splitlines()[0]}") from None
    model.to(device).eval()
    model.mlp_dtype = mlp_dtype(cfg.train.precision, device)  # the precision it was trained in
    if compile_enabled(cfg.train.compile, device):  # compiled as in training, in fixed-size chunks
        model.compile_forward()
    try:
        meta = json.loads((run / "cameras.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{run} has no cameras.json (the run's cameras and split)",
                        hint=f"it is written when training starts: run `mip360 train DATA --run {run}` again "
                             "(it resumes), or copy the whole run folder") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{run / 'cameras.json'} is damaged ({e})",
                        hint=f"run `mip360 train DATA --run {run}` again to rewrite it (it resumes)") from None
    cams = meta["cameras"]
    cameras = Cameras.create([c["K"] for c in cams], [c["c2w"] for c in cams], [c["width"] for c in cams],
                             [c["height"] for c in cams], [c.get("image_path", "") for c in cams],
                             [c["name"] for c in cams], [c["dist"] for c in cams])
    cache = meta.get("cache")
    return LoadedRun(run, cfg, model, int(state["step"]), cameras, np.asarray(meta["transform_input_to_normalized"]),
                     np.asarray(meta["train"], int), np.asarray(meta["test"], int), Path(cache) if cache else None,
                     device, state.get("cache_fingerprint"), Path(checkpoint))


def image_rays(K: np.ndarray, c2w: np.ndarray, dist: np.ndarray | None, width: int, height: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Origins, directions, viewdirs (H*W, 3) of one camera's pixels, row by row."""
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32)[None], device=device)  # noqa: E731
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    cam = torch.zeros(height * width, dtype=torch.long, device=device)
    d = t(dist) if dist is not None and np.any(dist != 0) else None
    return pixel_rays(t(K), t(c2w), d, cam, u.reshape(-1), v.reshape(-1))


def render_image(model: Mip360, K: np.ndarray, c2w: np.ndarray, dist: np.ndarray | None, width: int, height: int,
                 chunk: int | str, device: torch.device) -> dict[str, np.ndarray]:
    """Render one camera: rgb (H, W, 3), acc, mean_depth, median_depth (H, W), float32 numpy, scene units.

    ``chunk``: rays at once, or ``auto`` (``render.chunk_rays``, see :func:`~mip360cli.model.model.chunk_rays`).
    """
    out = render_rays(model, *image_rays(K, c2w, dist, width, height, device), chunk)
    return {k: x.float().cpu().numpy().reshape(height, width, *x.shape[1:]) for k, x in out.items()}


@dataclass
class View:
    name: str
    K: np.ndarray
    c2w: np.ndarray
    dist: np.ndarray | None
    width: int
    height: int


def path_views(loaded: LoadedRun, path: str, frames: int, ratio: float | None) -> list[View]:
    """The cameras of a named path or a camera-path file, at ``ratio`` of the original images."""
    cams = loaded.cameras
    f = (ratio if ratio else loaded.cfg.data.ratio) / loaded.cfg.data.ratio
    if path in ("test", "train"):
        idx = loaded.test if path == "test" else loaded.train
        if len(idx) == 0:
            raise UserError(f"the run has no {path} views", hint="it was trained with data.test_every=0")
        sub = cams.select(idx).scaled(f)
        return [View(Path(sub.names[i]).stem, sub.K[i], sub.c2w[i], sub.dist[i], int(sub.width[i]),
                     int(sub.height[i])) for i in range(len(sub))]
    ref = cams.select(loaded.train[:1]).scaled(f)
    K, size = ref.K[0], (int(ref.width[0]), int(ref.height[0]))
    train_c2w = cams.c2w[loaded.train]
    if path == "ellipse":
        poses = path_mod.ellipse_path(train_c2w, frames)
    elif path == "spiral":
        poses = path_mod.spiral_path(train_c2w, frames)
    elif path == "interp":
        poses = path_mod.interp_path(train_c2w, frames)
    elif path.endswith(".json") or Path(path).exists():
        poses, Ks, size = path_mod.load_path_file(Path(path), loaded.transform, size, K)
        return [View(f"{i:05d}", Ks[i], poses[i], None, *size) for i in range(len(poses))]
    else:
        raise UserError(f"unknown path '{path}'", hint=f"use one of {', '.join(PATHS)}, or a camera-path .json file")
    return [View(f"{i:05d}", K, poses[i], None, *size) for i in range(len(poses))]


def render_path(loaded: LoadedRun, path: str, frames: int, ratio: float | None, depth: str, video: bool,
                fps: float, out: Path | None, overwrite: bool, env: distributed.DistEnv | None = None) -> dict:
    """Render a path into ``out`` (default RUN/renders/<path>): frames, depth, videos.

    Frames already on disk are kept (``overwrite`` renders them again), so an
    interrupted render resumes. With several processes, rank r renders frames
    r, r + N, ...; rank 0 then writes the depth colormaps (one range for the
    whole path) and the videos.
    """
    env = env or distributed.DistEnv()
    if not fps > 0:
        raise UserError(f"--fps {fps}: must be > 0")
    views = path_views(loaded, path, frames, ratio)
    name = Path(path).stem if path not in PATHS else path
    out = out or loaded.run / "renders" / name
    chunk = loaded.cfg.render.chunk_rays
    if env.is_main:
        _forget_stale_frames(out, render_key(loaded, views, depth), overwrite)
    distributed.barrier(env)
    mine = list(range(env.rank, len(views), env.world))
    todo = [i for i in mine if not _frame_done(out, views[i].name, depth)]
    if env.is_main:
        info(f"rendering {len(views)} frames of {views[0].width}x{views[0].height} ({path}) into {out}"
             + (f"; {len(mine) - len(todo)} already there" if len(todo) < len(mine) else ""))
    with progress_bar("rendering", len(todo), "frames") as bar:
        for i in todo:
            v = views[i]
            img = render_image(loaded.model, v.K, v.c2w, v.dist, v.width, v.height, chunk, loaded.device)
            if depth != "none":
                d = img["median_depth" if depth == "median" else "mean_depth"] / loaded.scale
                if not loaded.cfg.model.opaque_background:
                    d = np.where(img["acc"] >= 0.5, d, np.nan)  # no surface there: NaN, black in the colormap
                write_npy(out / "depth" / f"{v.name}.npy", d.astype(np.float32))
            write_png(out / "rgb" / f"{v.name}.png", to_uint8(img["rgb"]))
            bar.advance()
    distributed.barrier(env)
    if not env.is_main:
        return {}
    names = [v.name for v in views]
    result = {"out": out, "frames": len(views), "rendered": len(todo) * env.world}
    if depth != "none":
        depth = lambda n: np.load(out / "depth" / f"{n}.npy", allow_pickle=False)  # noqa: E731 - never unpickles
        lo, hi = depth_range(depth(n) for n in names)
        for n in names:
            write_png(out / "depth" / f"{n}.png", depth_to_color(depth(n), lo, hi))
        result["depth_range"] = (lo, hi)
    if video:
        rgb = lambda: (read_image(out / "rgb" / f"{n}.png") for n in names)  # noqa: E731
        result["videos"] = [out / "rgb.mp4"]
        write_video(out / "rgb.mp4", rgb(), fps)
        if depth != "none":
            dep = lambda: (read_image(out / "depth" / f"{n}.png") for n in names)  # noqa: E731
            write_video(out / "depth.mp4", dep(), fps)
            write_video(out / "rgb_depth.mp4", (np.concatenate([a, b], 1) for a, b in zip(rgb(), dep())), fps)
            result["videos"] += [out / "depth.mp4", out / "rgb_depth.mp4"]
    return result


MANIFEST = "render.json"


def render_key(loaded: LoadedRun, views: list[View], depth: str) -> dict:
    """What the frames of a render depend on: the cameras, the checkpoint and the depth kind."""
    import hashlib

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


# ----------------------------------------------------------------------------- eval


def ground_truth(loaded: LoadedRun, stored: np.ndarray | None, index: int, width: int, height: int) -> np.ndarray:
    """The photo of camera ``index`` at (width, height), float64 in [0, 1].

    ``stored`` is the held-out photo kept in the ray cache (at the cache's size), or None;
    otherwise the original photo is read and resized.
    """
    if stored is not None and stored.shape[:2] == (height, width):
        return stored / 255.0
    path = loaded.cameras.image_paths[index]
    if str(path) in ("", ".") or not Path(path).is_file():
        raise UserError(f"the photo of view '{loaded.cameras.names[index]}' is not available ({path})",
                        hint="evaluate at the cache's ratio (its held-out photos are stored), or restore the images")
    data = loaded.cfg.data
    photo = read_image(Path(path), None if data.alpha == "error" else data.alpha_background)
    if photo.shape[1] < width or photo.shape[0] < height:
        # e.g. a run trained on images_4/ evaluated at a larger ratio: an upsampled photo is no ground truth
        raise UserError(f"the photo of view '{loaded.cameras.names[index]}' ({path}) is {photo.shape[1]}x"
                        f"{photo.shape[0]}, smaller than the {width}x{height} asked for",
                        hint="evaluate at the training ratio or below, or train from the full-size images")
    return resize_area(photo, width, height) / 255.0


def evaluate(loaded: LoadedRun, split: str, ratio: float | None, out: Path | None = None) -> dict:
    """Render the split's views, score them (PSNR, SSIM), write RUN/eval/ (metrics.json, per_image.csv, images)."""
    out = out or loaded.run / "eval"
    views = path_views(loaded, split, 0, ratio)
    idx = loaded.test if split == "test" else loaded.train
    rows = []
    use_cache = split == "test" and loaded.cache_path is not None and loaded.cache_path.exists()
    with contextlib.ExitStack() as stack, progress_bar("evaluating", len(views), "views") as bar:
        cache = stack.enter_context(RayCache(loaded.cache_path)) if use_cache else None  # opened once
        if cache is not None and str(cache.file.attrs.get("fingerprint")) != loaded.cache_fingerprint:
            # rebuilt since (another split, ratio or images): its held-out photos are other views
            info(f"{loaded.cache_path} was rebuilt after this checkpoint was trained; scoring against the "
                 "original photos instead of its held-out images")
            cache = None
        for k, (v, i) in enumerate(zip(views, idx)):
            img = render_image(loaded.model, v.K, v.c2w, v.dist, v.width, v.height, loaded.cfg.render.chunk_rays,
                               loaded.device)
            rgb = np.clip(img["rgb"], 0, 1).astype(np.float64)
            gt = ground_truth(loaded, cache.test_image(k) if cache else None, int(i), v.width, v.height)
            rows.append({"name": loaded.cameras.names[i], "psnr": metrics.psnr(rgb, gt), "ssim": metrics.ssim(rgb, gt)})
            err = np.abs(rgb - gt).mean(-1)
            heat = cv2.cvtColor(cv2.applyColorMap(to_uint8(np.clip(err * 4, 0, 1)), cv2.COLORMAP_INFERNO),
                                cv2.COLOR_BGR2RGB)
            write_png(out / "images" / f"{Path(rows[-1]['name']).stem}.png",
                      np.concatenate([to_uint8(gt), to_uint8(rgb), heat], 1))
            bar.advance()
    result = {
        "split": split, "ratio": ratio or loaded.cfg.data.ratio, "step": loaded.step,
        "config_hash": config_hash(loaded.cfg), "views": len(rows),
        "mean": {"psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows]))},
        "per_image": rows,
    }
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["name", "psnr", "ssim"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "per_image.csv", buf.getvalue())
    return result
