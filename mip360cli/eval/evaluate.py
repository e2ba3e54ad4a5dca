"""Scoring a run on its held-out views (``mip360 eval``): render, compare with the photos, write RUN/eval/."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np

from ..config import config_hash
from ..core.errors import UserError
from ..core.files import atomic_write_text
from ..core.progress import info, progress_bar
from ..data.cache import RayCache
from ..data.images import read_image, resize_area
from ..runs.writers import to_uint8, write_png
from ..runs.load import LoadedRun
from ..runs.views import render_image
from . import metrics


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
    out = out or loaded.folder.eval
    views = loaded.views(split, ratio)
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
