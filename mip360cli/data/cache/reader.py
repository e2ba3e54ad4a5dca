"""Reading a cache: cameras, split, buckets of rays and held-out images."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ...core.errors import UserError
from ..cameras import Cameras
from .format import CACHE_VERSION, READABLE_VERSIONS, decode_ids


class RayCache:
    """Read access to a ray cache (cameras, buckets of rays, held-out images).

    Open with ``RayCache(path)`` or as a context manager. Raises UserError if
    the file is missing, incomplete or of another format version.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"ray cache {self.path} does not exist", hint="build it with `mip360 preprocess DATA`")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise UserError(f"{self.path} is not a readable HDF5 ray cache ({e})",
                            hint="rebuild it with `mip360 preprocess DATA --force`") from None
        a = self.file.attrs
        if a.get("version") not in READABLE_VERSIONS or not a.get("complete", False):
            self.file.close()
            raise UserError(f"{self.path} is not a complete mip360 v{CACHE_VERSION} ray cache",
                            hint="rebuild it with `mip360 preprocess DATA --force`")
        self.n_rays = int(a["n_rays"])
        self.n_buckets = int(a["n_buckets"])
        self.options = json.loads(a["options"])
        self.format = str(a["format"])
        g = self.file["rays"]
        self.ray_offsets = g["ray_offsets"][:].astype(np.int64)
        self.bucket_offsets = g["bucket_offsets"][:].astype(np.int64)
        self.bucket_first_id = g["bucket_first_id"][:].astype(np.int64)
        self.overflow_row = g["overflow_row"][:]
        self.overflow_gap = g["overflow_gap"][:]
        self.train = self.file["split/train"][:]
        self.test = self.file["split/test"][:]
        self.transform = self.file["transform"][:]
        c = self.file["cameras"]
        self.cameras = Cameras.create(
            c["K"][:], c["c2w"][:], c["width"][:], c["height"][:],
            [s.decode() if isinstance(s, bytes) else s for s in c["image_paths"][:]],
            [s.decode() if isinstance(s, bytes) else s for s in c["names"][:]], c["dist"][:])

    def __enter__(self) -> "RayCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def bucket_size(self, b: int) -> int:
        return int(self.bucket_offsets[b + 1] - self.bucket_offsets[b])

    def read_bucket(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rays of bucket ``b`` (sorted by ray id; shuffle them before use).

        Returns:
            camera: (m,) int64 camera index (into ``cameras``) of each ray.
            u, v: (m,) int64 pixel column and row.
            rgb: (m, 3) uint8 color.
        """
        lo, hi = self.bucket_offsets[b], self.bucket_offsets[b + 1]
        g = self.file["rays"]
        a, z = np.searchsorted(self.overflow_row, [lo, hi])
        ids = decode_ids(g["gap"][lo:hi], self.bucket_first_id[b], self.overflow_row[a:z] - lo,
                         self.overflow_gap[a:z])
        rgb = g["rgb"][lo:hi]
        j = np.searchsorted(self.ray_offsets, ids, side="right") - 1
        pix = ids - self.ray_offsets[j]
        camera = self.train[j].astype(np.int64)
        width = self.cameras.width[camera]
        return camera, pix % width, pix // width, rgb

    def test_image(self, k: int) -> np.ndarray:
        """Held-out image ``k`` (camera ``test[k]``): (H, W, 3) uint8."""
        return self.file[f"test/images/{k:05d}"][:]
