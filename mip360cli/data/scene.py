"""A dataset folder turned into normalized, split, resized cameras.

``load_scene`` is the only place where a format reader, frame selection,
normalization, the test split and the ``ratio`` resize meet; the ray cache
stores its result and nothing downstream reads a format again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import UserError
from .cameras import Cameras, check_intrinsics, check_poses, normalize_poses, split_indices
from .formats import read_cameras
from .images import image_size


@dataclass(frozen=True)
class Scene:
    """Cameras ready for the cache.

    Attributes:
        cameras: (N) normalized cameras at the output resolution (after ``ratio``).
        source_width, source_height: (N,) sizes the camera files describe (before ``ratio``).
        transform: (4, 4) input world -> normalized world (scale included).
        train, test: indices into ``cameras``.
        format: the format that was read.
        camera_files: the camera files that were read (for the fingerprint).
    """

    cameras: Cameras
    source_width: np.ndarray
    source_height: np.ndarray
    transform: np.ndarray
    train: np.ndarray
    test: np.ndarray
    format: str
    camera_files: tuple[Path, ...]


def load_scene(folder: str | Path, data: DataConfig, check_images: bool = True) -> Scene:
    """Read, validate, select, normalize, split and resize the cameras of ``folder``.

    Args:
        folder: dataset folder in any supported format.
        data: the ``data`` config section (format, ratio, frame_interval, test_every).
        check_images: check that every image exists and its header size matches
            the intrinsics (cheap: headers only).
    """
    folder = Path(folder)
    fmt, cams, files = read_cameras(folder, data.format, data.ratio, data.easymocap_frame)
    source = files[0] if files else folder
    check_intrinsics(cams.K, cams.width, cams.height, cams.names, source)
    check_poses(cams.c2w, cams.names, source)
    cams = cams.select(np.arange(0, len(cams), data.frame_interval))
    if check_images:
        for i in range(len(cams)):
            check_image_size(cams.image_paths[i], image_size(cams.image_paths[i]),
                             (int(cams.width[i]), int(cams.height[i])), data.ratio, source)
    c2w, transform = normalize_poses(cams.c2w)
    source_w, source_h = cams.width.copy(), cams.height.copy()
    cams = cams.replace(c2w=c2w).scaled(data.ratio)
    train, test = split_indices(len(cams), data.test_every)
    if len(train) == 0:
        raise UserError(f"{folder}: no training images left ({len(cams)} images, test_every={data.test_every})",
                        hint="use more images, a smaller frame_interval, or test_every=0")
    return Scene(cams, source_w, source_h, transform, train, test, fmt, tuple(files))


def check_image_size(path: Path, actual: tuple[int, int], expected: tuple[int, int], ratio: float,
                     source: Path) -> bool:
    """Check an image's (width, height) against the camera file's.

    Accepts the full size, or the size after ``ratio`` (give or take a pixel of
    rounding, as LLFF's ``images_N`` folders are). Returns True when the image
    is already at the output size. Raises UserError otherwise.
    """
    if tuple(actual) == tuple(expected):
        return ratio == 1.0
    if ratio != 1.0:
        sw, sh = (max(1, round(e * ratio)) for e in expected)
        if abs(actual[0] - sw) <= 1 and abs(actual[1] - sh) <= 1:
            return True
    raise UserError(
        f"image {path} is {actual[0]}x{actual[1]} but {source.name} says {expected[0]}x{expected[1]}",
        hint="the intrinsics must describe the images on disk: re-export the cameras or restore the "
             "original images")
