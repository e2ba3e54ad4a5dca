"""Reading a cache: cameras, split, buckets of rays and held-out images, every part checked.

A cache is read like any other input: its attributes and index are checked when it is opened
(offsets in order and in range, cameras valid, the split inside the cameras, the index checksum),
and each bucket and held-out image against its CRC-32 when it is read; damage is one message that
names the cache and the fix, never training on garbage.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ...core.errors import UserError
from ...core.files import check_regular_file
from ...core.progress import warn
from ..cameras import Cameras, check_intrinsics, check_poses
from .format import CACHE_VERSION, READABLE_VERSIONS, crc32, decode_ids, index_checksum

REBUILD = "rebuild it: mip360 preprocess DATA --force"


def _json_dict(text) -> dict | None:
    """An attribute holding a JSON object, or None (absent, damaged, not an object): for records only."""
    try:
        value = json.loads(text) if text is not None else None
    except (ValueError, TypeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class RayCache:
    """Read access to a ray cache (cameras, buckets of rays, held-out images).

    Open with ``RayCache(path)`` or as a context manager. Raises UserError if the file is
    missing, incomplete, of another format version, or damaged.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"ray cache {self.path} does not exist", hint="build it with `mip360 preprocess DATA`")
        check_regular_file(self.path, "ray cache")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise UserError(f"{self.path} is not a readable HDF5 ray cache ({e})", hint=REBUILD) from None
        try:
            self._open()
        except UserError:
            self.file.close()
            raise
        except (KeyError, ValueError, TypeError, OSError, IndexError, AttributeError) as e:
            self.file.close()
            raise self.damaged(f"{type(e).__name__}: {e}") from None

    def damaged(self, what: str) -> UserError:
        return UserError(f"the ray cache {self.path} is damaged: {what}", hint=REBUILD)

    def _open(self) -> None:
        a = self.file.attrs
        if a.get("version") not in READABLE_VERSIONS or not a.get("complete", False):
            raise UserError(f"{self.path} is not a complete mip360 v{CACHE_VERSION} ray cache", hint=REBUILD)
        self.version = int(a["version"])
        self.checked = "index_crc32" in a
        if self.checked and index_checksum(self.file) != int(a["index_crc32"]):
            raise self.damaged("its index (offsets, split, cameras) does not match its checksum")
        if not self.checked and self.version >= 3:
            raise self.damaged("it has no checksums")
        self.n_rays, self.n_buckets = int(a["n_rays"]), int(a["n_buckets"])
        self.options = json.loads(a["options"])
        if not isinstance(self.options, dict):
            raise self.damaged("its options are not a JSON object")
        self.format = str(a["format"])
        self.masked = self.options.get("masks") == "auto"
        """Whether masks took pixels out (its rays are then fewer than its training pixels)."""
        self.image_source = _json_dict(a.get("image_source"))
        """How its images were made (``data.scene.image_source``), None when not recorded."""
        g = self.file["rays"]
        self.ray_offsets = g["ray_offsets"][:].astype(np.int64)
        self.bucket_offsets = g["bucket_offsets"][:].astype(np.int64)
        self.bucket_first_id = g["bucket_first_id"][:].astype(np.int64)
        self.overflow_row = g["overflow_row"][:].astype(np.int64)
        self.overflow_gap = g["overflow_gap"][:].astype(np.int64)
        self.bucket_crc = g["bucket_crc32"][:].astype(np.int64) if "bucket_crc32" in g else None
        self.train = self.file["split/train"][:].astype(np.int64)
        self.test = self.file["split/test"][:].astype(np.int64)
        self.transform = self.file["transform"][:]
        c = self.file["cameras"]
        self.cameras = Cameras.create(
            c["K"][:], c["c2w"][:], c["width"][:], c["height"][:],
            [s.decode() if isinstance(s, bytes) else s for s in c["image_paths"][:]],
            [s.decode() if isinstance(s, bytes) else s for s in c["names"][:]], c["dist"][:])
        self._check_index(g)
        if not self.checked:
            warn(f"{self.path} was written by an earlier mip360 without checksums: damage to it cannot be "
                 f"detected ({REBUILD})")

    def _check_index(self, g: h5py.Group) -> None:
        """Every offset, index and camera in range: what reading buckets relies on."""
        cams, n, B = self.cameras, self.n_rays, self.n_buckets
        try:
            check_intrinsics(cams.K, cams.width, cams.height, cams.names, self.path)
            check_poses(cams.c2w, cams.names, self.path)
        except UserError as e:
            raise self.damaged(e.args[0].split(": ", 1)[-1]) from None
        split = np.concatenate([self.train, self.test])
        if len(self.train) == 0 or split.min() < 0 or split.max() >= len(cams) or len(np.unique(split)) != len(split):
            raise self.damaged(f"its split names cameras outside the {len(cams)} it holds, or one twice")
        pixels = cams.width[self.train] * cams.height[self.train]
        # ray ids are pixel ids: with masks, the masked pixels' ids are not among the rays
        if not np.array_equal(self.ray_offsets, np.concatenate([[0], np.cumsum(pixels)])) or (
                n > self.ray_offsets[-1] if self.masked else n != self.ray_offsets[-1]):
            raise self.damaged("its ray offsets do not match its training cameras' pixels")
        bo = self.bucket_offsets
        if B < 1 or len(bo) != B + 1 or bo[0] != 0 or bo[-1] != n or np.any(np.diff(bo) < 0):
            raise self.damaged(f"its {B} bucket offsets are not in order from 0 to its {n:,} rays")
        n_ids = self.ray_offsets[-1]  # ray ids are pixel ids: up to the training pixels, masked or not
        if len(self.bucket_first_id) != B or np.any((self.bucket_first_id < 0) | (self.bucket_first_id >= n_ids)):
            raise self.damaged("a bucket's first ray id is outside its rays")
        ov = self.overflow_row
        if len(ov) != len(self.overflow_gap) or (len(ov) and (ov.min() < 0 or ov.max() >= n or
                                                               np.any(np.diff(ov) <= 0))):
            raise self.damaged("its table of large id gaps is out of order or range")
        if g["gap"].shape != (n,) or g["rgb"].shape != (n, 3) or (self.bucket_crc is not None
                                                                  and len(self.bucket_crc) != B):
            raise self.damaged("its ray datasets do not hold its number of rays")
        if not np.all(np.isfinite(self.transform)) or self.transform.shape != (4, 4):
            raise self.damaged("its transform is not a finite 4x4 matrix")

    def __enter__(self) -> "RayCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def bucket_size(self, b: int) -> int:
        return int(self.bucket_offsets[b + 1] - self.bucket_offsets[b])

    def read_bucket(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rays of bucket ``b`` (sorted by ray id; shuffle them before use), checked against its CRC-32.

        Returns:
            camera: (m,) int64 camera index (into ``cameras``) of each ray.
            u, v: (m,) int64 pixel column and row.
            rgb: (m, 3) uint8 color.
        """
        lo, hi = self.bucket_offsets[b], self.bucket_offsets[b + 1]
        g = self.file["rays"]
        try:
            gaps, rgb = g["gap"][lo:hi], g["rgb"][lo:hi]
        except OSError as e:  # a compressed chunk that does not decompress
            raise self.damaged(f"bucket {b} of {self.n_buckets} cannot be read ({e})") from None
        if self.bucket_crc is not None and crc32(gaps, rgb) != self.bucket_crc[b]:
            raise self.damaged(f"bucket {b} of {self.n_buckets} does not match its checksum")
        a, z = np.searchsorted(self.overflow_row, [lo, hi])
        ids = decode_ids(gaps, self.bucket_first_id[b], self.overflow_row[a:z] - lo, self.overflow_gap[a:z])
        if len(ids) and (ids[0] < 0 or ids[-1] >= self.ray_offsets[-1]):
            raise self.damaged(f"bucket {b} of {self.n_buckets} holds ray ids outside its rays")
        j = np.searchsorted(self.ray_offsets, ids, side="right") - 1
        pix = ids - self.ray_offsets[j]
        camera = self.train[j]
        width = self.cameras.width[camera]
        return camera, pix % width, pix // width, rgb

    def test_mask(self, k: int) -> np.ndarray | None:
        """The mask of held-out image ``k``: (H, W) bool, True where it is scored; None when it has none."""
        name = f"test/masks/{k:05d}"
        if name not in self.file:
            return None
        i = int(self.test[k])
        shape = (int(self.cameras.height[i]), int(self.cameras.width[i]))
        try:
            ds = self.file[name]
            keep = ds[:]
        except OSError as e:
            raise self.damaged(f"the mask of held-out image {k} cannot be read ({type(e).__name__})") from None
        if keep.shape != shape or keep.dtype != np.uint8 or crc32(keep) != int(ds.attrs.get("crc32", -1)):
            raise self.damaged(f"the mask of held-out image {k} is not its image's shape or does not match its "
                               "checksum")
        return keep > 0

    def test_image(self, k: int) -> np.ndarray:
        """Held-out image ``k`` (camera ``test[k]``): (H, W, 3) uint8, checked against its CRC-32."""
        name = f"test/images/{k:05d}"
        i = int(self.test[k])
        shape = (int(self.cameras.height[i]), int(self.cameras.width[i]), 3)
        try:
            ds = self.file[name]
            img = ds[:]
        except (KeyError, OSError) as e:
            raise self.damaged(f"held-out image {k} cannot be read ({type(e).__name__})") from None
        if img.shape != shape or img.dtype != np.uint8:
            raise self.damaged(f"held-out image {k} is {img.shape} {img.dtype}, not {shape} uint8")
        if "crc32" in ds.attrs and crc32(img) != int(ds.attrs["crc32"]):
            raise self.damaged(f"held-out image {k} does not match its checksum")
        return img
