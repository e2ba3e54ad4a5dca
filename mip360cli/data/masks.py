"""Masks of pixels to ignore (people walking through, the photographer's shadow): ``masks/`` beside ``images/``.

A mask is a PNG with the image's name (``masks/IMG_01.png`` for ``images/IMG_01.JPG``; COLMAP's
``masks/IMG_01.JPG.png`` too) and 0 where the image is to be ignored, nerfstudio's and COLMAP's
convention. It may be at the size of the photo or of any downscaled copy of it (``images_4/``): it is
resized to the size the cache holds, and a pixel any part of which is masked is ignored.
Images without a mask are used whole.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..core.errors import UserError
from ..core.files import atomic_path
from .images import check_image_file

FOLDER = "masks"


def mask_candidates(root: Path, image_path: Path) -> list[Path]:
    """Where the mask of ``image_path`` may be: ``root/masks/`` plus the image's path below its ``images*``
    folder (or below ``root``), with ``.png`` in place of its extension, or after it (COLMAP)."""
    image_path = Path(image_path)
    try:
        rel = image_path.resolve().relative_to(Path(root).resolve())
    except ValueError:
        return []
    parts = rel.parts[1:] if len(rel.parts) > 1 and rel.parts[0].startswith("images") else rel.parts
    below = Path(FOLDER, *parts)
    return [Path(root) / below.with_suffix(".png"), Path(root) / below.with_name(below.name + ".png")]


def find_masks(root: Path, image_paths: tuple[Path, ...]) -> tuple[Path | None, ...]:
    """The mask of each image (None where it has none); empty when ``root`` has no ``masks/`` folder."""
    if not (Path(root) / FOLDER).is_dir():
        return ()
    return tuple(next((c for c in mask_candidates(root, p) if c.is_file()), None) for p in image_paths)


def mask_for_image(image_path: Path, levels: int = 4) -> Path | None:
    """The mask of an image found from the image alone (the dataset folder is the nearest one above it, at
    most ``levels`` up, that holds ``masks/``); None when it has none."""
    for root in list(Path(image_path).resolve().parents)[:levels]:
        if (root / FOLDER).is_dir():
            return next((c for c in mask_candidates(root, image_path) if c.is_file()), None)
    return None


def decode_mask(data: np.ndarray, path: Path, width: int, height: int) -> np.ndarray:
    """A mask file's bytes as (height, width) bool, True where the pixel is used.

    Any non-zero value keeps the pixel; a mask of another size than (width, height) but the same shape
    (one pixel of rounding per side) is resized, and a pixel is kept only when all of it was.
    """
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise UserError(f"cannot decode mask {path}", hint="masks are PNG images: 0 = ignore the pixel, else use it")
    if img.ndim == 3:  # grey with alpha: the grey; colour (with alpha or not): any colour channel
        img = img[..., 0] if img.shape[2] < 3 else img[..., :3].max(-1)
    keep = img > 0
    h, w = keep.shape
    if (w, h) == (width, height):
        return keep
    if abs(w * height / h - width) > 1 + height / h:  # not the same shape, up to the rounding of a resize
        raise UserError(f"mask {path} is {w}x{h}, which is not the shape of its {width}x{height} image",
                        hint="a mask must have its image's size, or be a scaled copy of it")
    scaled = cv2.resize(np.where(keep, 255, 0).astype(np.uint8), (width, height), interpolation=cv2.INTER_AREA)
    return scaled == 255


def read_mask(path: Path, width: int, height: int) -> np.ndarray:
    """:func:`decode_mask` of the file at ``path`` (checked as an image file: bounded, regular)."""
    check_image_file(path)
    return decode_mask(np.frombuffer(Path(path).read_bytes(), np.uint8), path, width, height)


def write_mask(path: Path, keep: np.ndarray) -> None:
    """Write a (H, W) bool mask as a one-channel PNG (255 = use the pixel, 0 = ignore it), atomically."""
    ok, data = cv2.imencode(".png", np.where(keep, 255, 0).astype(np.uint8))
    if not ok:
        raise UserError(f"cannot encode mask {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
