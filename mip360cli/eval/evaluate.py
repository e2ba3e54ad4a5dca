"""Scoring a run on its held-out views (``mip360 eval``): render, compare with the photos, write RUN/eval/."""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np

from ..config import config_hash
from ..core.errors import UserError
from ..core.progress import info, progress_bar, warn
from ..data.cache import RayCache
from ..data.images import read_image, resize_area
from ..data.masks import mask_for_image, read_mask
from ..runs.writers import to_uint8, write_png
from ..runs.load import LoadedRun
from ..runs.views import render_image
from . import metrics
from .lpips import load_lpips
from .report import SSIM, comparable, write_report


def ground_truth(loaded: LoadedRun, stored: np.ndarray | None, index: int, width: int, height: int
                 ) -> tuple[np.ndarray, str, list[int] | None]:
    """The photo of camera ``index`` at (width, height), float64 in [0, 1]; where it came from: ``cache`` (the
    held-out photo kept in the ray cache, ``stored``), ``as is`` or ``resized`` (the original photo read
    again, resized when its size differs); and the size it was read at (None from the cache).
    """
    if stored is not None and stored.shape[:2] == (height, width):
        return stored / 255.0, "cache", None
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
    resized = photo.shape[:2] != (height, width)
    return (resize_area(photo, width, height) / 255.0, "resized" if resized else "as is",
            [photo.shape[1], photo.shape[0]])


def evaluate(loaded: LoadedRun, split: str, ratio: float | None, out: Path | None = None) -> dict:
    """Render the split's views, score them (PSNR, SSIM, LPIPS where it can), write RUN/eval/ (metrics.json with
    the record of how the scores were made, per_image.csv, images/) and return the result.

    With ``eval.quantize`` (the default) renders are rounded to 8 bits first, as the published numbers are.
    """
    ec = loaded.cfg.eval
    out = out or loaded.folder.eval
    views = loaded.views(split, ratio)
    idx = loaded.test if split == "test" else loaded.train
    scorer, lpips_line = load_lpips(ec.lpips, ec.lpips_net, loaded.device, min(min(v.width, v.height) for v in views))
    rows, sources, first_read, appearance = [], set(), None, {}
    use_cache = split == "test" and loaded.cache_path is not None and loaded.cache_path.exists()
    with contextlib.ExitStack() as stack, progress_bar("evaluating", len(views), "views") as bar:
        cache = stack.enter_context(RayCache(loaded.cache_path)) if use_cache else None  # opened once
        if cache is not None and str(cache.file.attrs.get("fingerprint")) != loaded.cache_fingerprint:
            # rebuilt since (another split, ratio or images): its held-out photos are other views
            info(f"{loaded.cache_path} was rebuilt after this checkpoint was trained; scoring against the "
                 "original photos instead of its held-out images")
            cache = None
        for k, (v, i) in enumerate(zip(views, idx)):
            code, appearance[loaded.cameras.names[i]] = appearance_for(loaded, int(i), split)
            img = render_image(loaded.model, v.K, v.c2w, v.dist, v.width, v.height, loaded.cfg.render.chunk_rays,
                               loaded.device, depth=False, code=code)
            rgb = metrics.quantize(img["rgb"]) if ec.quantize else np.clip(img["rgb"], 0, 1).astype(np.float64)
            gt, source, read = ground_truth(loaded, cache.test_image(k) if cache else None, int(i), v.width,
                                            v.height)
            keep = scored_pixels(loaded, cache, k, int(i), v.width, v.height, source)
            if keep is not None and not keep.any():
                warn(f"view {loaded.cameras.names[i]} is masked entirely: not scored")
                bar.advance()
                continue
            sources.add(source)
            first_read = read if k == 0 else first_read
            row = {"name": loaded.cameras.names[i], "psnr": metrics.psnr(rgb, gt, keep),
                   "ssim": metrics.ssim(rgb, gt, keep=keep)}
            if scorer is not None:  # masked pixels taken from the photo: no difference there
                row["lpips"] = scorer(rgb if keep is None else np.where(keep[..., None], rgb, gt), gt)
            if keep is not None:
                row["masked"] = round(float(1 - keep.mean()), 6)
            rows.append(row)
            _write_panel(out / "images" / panel_name(row["name"]), gt, rgb)
            bar.advance()
    if not rows:
        raise UserError(f"every {split} view of {loaded.run} is masked entirely: nothing to score",
                        hint="check the masks of the held-out photos (0 = ignore the pixel)")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")}
    mean["lpips"] = float(np.mean([r["lpips"] for r in rows])) if scorer is not None else None
    result = {"split": split, "ratio": ratio or loaded.cfg.data.ratio, "step": loaded.step,
              "config_hash": config_hash(loaded.cfg), "views": len(rows), "mean": mean, "per_image": rows}
    used = [views[0].width, views[0].height]
    result["protocol"] = _protocol(loaded, split, result, sources, (first_read, used), lpips_line, scorer)
    masked = [r["masked"] for r in rows if "masked" in r]
    if masked:
        result["protocol"]["masks"] = {
            "views": len(masked), "ignored_pixels": float(np.sum(masked) / len(rows)),
            "how": "PSNR and SSIM over the unmasked pixels (SSIM: the windows centred on them); LPIPS with the "
                   "masked pixels taken from the photo"}
    if loaded.model.images.codes is not None:  # which image's appearance each view was rendered with
        result["protocol"]["appearance"] = {"codes": "the nearest training camera's (its own for a training view)",
                                            "used": appearance}
    write_report(out, result)
    return result


def scored_pixels(loaded: LoadedRun, cache, k: int, index: int, width: int, height: int, source: str
                  ) -> np.ndarray | None:
    """(H, W) bool: the pixels of view ``index`` to score (its mask), None for all. From the cache with its
    held-out photo, else the photo's mask in the dataset (``masks/``), unless ``data.masks`` is none."""
    if loaded.cfg.data.masks == "none":
        return None
    if source == "cache":
        return cache.test_mask(k)
    path = mask_for_image(loaded.cameras.image_paths[index])
    return None if path is None else read_mask(path, width, height)


def appearance_for(loaded: LoadedRun, index: int, split: str) -> tuple["torch.Tensor | None", str | None]:
    """The appearance code to score camera ``index`` with, and the training image it belongs to: a training
    view's own; a held-out view's nearest training camera's (multinerf's glo models are evaluated likewise
    with a code they were not given). None for a model without codes."""
    if loaded.model.images.codes is None:
        return None, None
    names = loaded.cameras.names
    row = (int(np.flatnonzero(loaded.train == index)[0]) if split == "train"
           else loaded.nearest_training_row(loaded.cameras.c2w[index]))
    return loaded.model.images.codes[row].detach(), names[int(loaded.train[row])]


def panel_name(name: str) -> str:
    """Where the panel of image ``name`` goes under ``images/``: its name's folders kept (``d2/000.png`` of a
    multi-scale capture beside ``000.png``), none that would leave the folder.

    Example:
        >>> panel_name("d2/000.jpg"), panel_name("../../x.JPG"), panel_name("/abs/a.png")
        ('d2/000.png', 'x.png', 'abs/a.png')
    """
    parts = [p for p in Path(name.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return str(Path(*parts).with_suffix(".png")) if parts else "image.png"


def _write_panel(path: Path, gt: np.ndarray, rgb: np.ndarray) -> None:
    """photo | render | error (inferno, 4x the mean absolute error) as one PNG."""
    err = np.abs(rgb - gt).mean(-1)
    heat = cv2.cvtColor(cv2.applyColorMap(to_uint8(np.clip(err * 4, 0, 1)), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    write_png(path, np.concatenate([to_uint8(gt), to_uint8(rgb), heat], 1))


def _protocol(loaded: LoadedRun, split: str, result: dict, sources: set[str], sizes: tuple, lpips_line: str,
              scorer) -> dict:
    """How the scores were made (see :mod:`.report`). ``sizes``: the first photo's size as read (None from the
    cache) and as scored."""
    data = loaded.cfg.data
    recorded = dict(loaded.image_source or {})
    if sources == {"cache"}:  # the held-out photos the cache holds, made as its record says
        source = "unknown" if not recorded else ("shipped" if recorded.get("resized") == 0 else "resized")
        images = {**recorded, "source": source}
    else:  # read again from the photos (another ratio, or the cache is gone or was rebuilt)
        resized = "resized" in sources
        images = {"source": "resized" if resized else "shipped", "folders": recorded.get("folders", []),
                  "filter": "cv2.INTER_AREA" if resized else None, "read": sizes[0], "used": sizes[1]}
    protocol = {
        "images": images, "quantize": loaded.cfg.eval.quantize,
        "split": {"name": split, "test_every": data.test_every, "frame_interval": data.frame_interval},
        "held_out": [r["name"] for r in result["per_image"]], "ratio": result["ratio"],
        "ssim": SSIM, "lpips": lpips_line, "lpips_net": loaded.cfg.eval.lpips_net if scorer is not None else None,
        "checkpoint_step": loaded.step, "steps_trained": loaded.step, "train_seconds": loaded.train_seconds,
    }
    protocol["comparable"] = comparable(protocol)
    return protocol
