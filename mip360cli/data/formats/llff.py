"""LLFF ``poses_bounds.npy`` (N x 17) with ``images/`` (and ``images_N/``).

Each row is a 3x5 matrix (flattened row-major) followed by (near, far).
Columns 0-2 are the camera's (down, right, backwards) axes in world space,
column 3 its position, column 4 (height, width, focal) of the full-size
images. Rows follow the sorted image file names. Principal point = center.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.errors import UserError
from ...core.files import MIB, check_regular_file
from ..cameras import Cameras
from ..images import downscaled_folder, image_size, list_images

FILE = "poses_bounds.npy"


def detect(folder: Path) -> bool:
    return (folder / FILE).exists()


def input_files(folder: Path) -> list[Path]:
    return [folder / FILE]


def read(folder: Path, ratio: float = 1.0) -> Cameras:
    """Read ``poses_bounds.npy``; picks ``images_N`` when ``ratio == 1/N`` and it exists.

    The returned cameras always describe the full-size images; when a
    downscaled folder is used its files are the image paths, and the size
    check at decode time accepts the already-scaled size.
    """
    path = folder / FILE
    check_regular_file(path, "camera file", 256 * MIB)  # 136 bytes a pose
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle: an object array is refused
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise UserError(f"{path}: cannot read ({e})", hint="expected an N x 17 float array") from None
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise UserError(f"{path}: expected an N x 17 array, got shape {arr.shape}")
    image_folder = folder / "images"
    down = downscaled_folder(folder, ratio)
    files_full = list_images(image_folder) if image_folder.is_dir() else []
    files = list_images(down[0]) if down else files_full
    if not files:
        raise UserError(f"{image_folder}: no images found", hint="LLFF data needs its images in images/")
    if len(files) != len(arr):
        raise UserError(f"{path} has {len(arr)} poses but {(down[0] if down else image_folder)} "
                        f"has {len(files)} images",
                        hint="poses_bounds.npy rows must match the sorted image files one to one")
    mats = arr[:, :15].reshape(-1, 3, 5)
    h, w, f = mats[:, 0, 4], mats[:, 1, 4], mats[:, 2, 4]
    if files_full and len(files_full) == len(arr):
        # hwf may be stale after the images were resized: trust the real full-size files.
        fw, fh = image_size(files_full[0])
        if (fw, fh) != (int(round(w[0])), int(round(h[0]))):
            f = f * fw / w
            w, h = np.full_like(w, fw), np.full_like(h, fh)
    down_, right, back, pos = mats[:, :, 0], mats[:, :, 1], mats[:, :, 2], mats[:, :, 3]
    c2w = np.stack([right, down_, -back, pos], axis=-1)
    K = np.zeros((len(arr), 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = w / 2, h / 2, 1
    names = [p.name for p in files]
    return Cameras.create(K, c2w, np.round(w), np.round(h), files, names)


def write(folder: Path, cameras: Cameras, bounds: np.ndarray) -> None:
    """Write ``poses_bounds.npy`` for pinhole cameras with a centered principal point.

    Args:
        bounds: (N, 2) near and far depth of each image.
    """
    K = cameras.K
    if np.any(cameras.dist != 0) or np.any(K[:, 0, 0] != K[:, 1, 1]):
        raise ValueError("LLFF stores one focal length and no distortion")
    c2w = cameras.c2w
    mats = np.stack([c2w[:, :, 1], c2w[:, :, 0], -c2w[:, :, 2], c2w[:, :, 3],
                     np.stack([cameras.height, cameras.width, K[:, 0, 0]], -1)], axis=-1)
    arr = np.concatenate([mats.reshape(-1, 15), np.asarray(bounds, np.float64)], axis=1)
    np.save(folder / FILE, arr)
