"""Building a cache: the images streamed through the shuffle into buckets, written atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ...config import CacheConfig, DataConfig
from ...core.errors import UserError
from ...core.files import atomic_path, ensure_writable_dir, leftover_temp_files, process_lock
from ...core.progress import info, progress_bar
from ...core.version import __version__
from ..images import check_image_file, decode_image, resize_area
from ..masks import decode_mask
from ..scene import Scene, check_image_size, load_scene
from . import shuffle
from .fingerprint import (adopt_cache_options, cache_options, check_cache, file_hash, fingerprint, input_files,
                          is_mip360_cache)
from .format import CACHE_VERSION, DEFAULT_NAME, crc32, encode_gaps, index_checksum
from .shuffle import BucketBlocks, bucket_sort_image, ordered_map, trim_heap

_FILTERS = {"lzf": dict(compression="lzf", shuffle=True), "gzip": dict(compression="gzip", compression_opts=4,
                                                                        shuffle=True), "none": {}}


@dataclass
class CacheSummary:
    path: Path
    status: str  # "built" | "up to date"
    images: int
    train_images: int
    test_images: int
    rays: int
    bytes: int
    seconds: float
    format: str
    source: str
    data: DataConfig
    """The data options the cache holds (the user's, or the existing cache's where not given)."""
    cache: CacheConfig
    reasons: list[str] = dataclasses.field(default_factory=list)

    @property
    def bytes_per_ray(self) -> float:
        return self.bytes / max(self.rays, 1)


def default_cache_path(folder: Path, cache: CacheConfig) -> Path:
    return Path(cache.path) if cache.path else Path(folder) / DEFAULT_NAME


def build_cache(folder: str | Path, data: DataConfig, cache: CacheConfig, out: str | Path | None = None,
                force: bool = False, explicit: set[str] | None = None) -> CacheSummary:
    """Build (or confirm up to date) the ray cache of dataset ``folder``.

    A cache whose fingerprint (options + input names and content hashes) matches
    is reused at once; a stale one is rebuilt automatically, and the reasons are
    reported. ``force`` rebuilds in any case.

    Args:
        explicit: the dotted keys the user gave on the command line. When given, an
            existing cache's options are taken for every other key (what preprocess
            built is what later commands use); None = use ``data`` and ``cache`` as they are.
    """
    t0 = time.perf_counter()
    folder = Path(folder)
    path = Path(out) if out else default_cache_path(folder, cache)
    if path.exists() and path.is_dir():
        raise UserError(f"cache path {path} is a folder", hint="give a file name ending in .h5 (--out)")
    if path.exists() and not is_mip360_cache(path):
        raise UserError(f"{path} exists and is not a mip360 ray cache: mip360 does not overwrite it",
                        hint="give another file with --out, or move that file away")
    if explicit is not None:
        data, cache, adopted = adopt_cache_options(path, data, cache, explicit)
        if adopted:
            info(f"using the options {path.name} was built with: {', '.join(adopted)} "
                 "(give them on the command line to change them)")
    scene = load_scene(folder, data)
    ensure_writable_dir(path.parent)
    with process_lock(path.with_name(f".{path.name}.lock"), f"the ray cache {path}"):
        for leftover in leftover_temp_files(path):  # of a preprocess that was killed: never complete
            with contextlib.suppress(OSError):
                leftover.unlink()
        summary = _build_locked(folder, path, scene, data, cache, force, explicit)
    summary.seconds = time.perf_counter() - t0
    return summary


def _build_locked(folder: Path, path: Path, scene: Scene, data: DataConfig, cache: CacheConfig, force: bool,
                  explicit: set[str] | None) -> CacheSummary:
    options = cache_options(data, cache, scene.format, scene.n_masks)
    reasons, records = check_cache(path, options, input_files(scene, folder), explicit or frozenset())
    summary = dict(path=path, images=len(scene.cameras), train_images=len(scene.train),
                   test_images=len(scene.test), format=scene.format, source=scene.describe(folder),
                   data=data, cache=cache, seconds=0.0)
    if reasons is None and not force:
        with h5py.File(path, "r") as f:
            n_rays = int(f.attrs["n_rays"])
        return CacheSummary(status="up to date", rays=n_rays, bytes=path.stat().st_size, **summary)
    if reasons is None:
        reasons = ["--force"]
    if path.exists():
        info(f"rebuilding {path}: " + "; ".join(reasons))
    check_free_space(path, scene, cache)
    with atomic_path(path, disk_full_hint="free some space, or write the cache elsewhere with --out") as tmp:
        n_rays = _write_cache(tmp, scene, cache, options, records)
    return CacheSummary(status="built", rays=n_rays, bytes=path.stat().st_size, reasons=reasons, **summary)


def check_free_space(path: Path, scene: Scene, cache: CacheConfig) -> None:
    """Refuse to start a cache the disk cannot hold.

    Checked before writing, because HDF5 does not always fail cleanly when the disk
    fills during a write (a real full disk crashed h5py). Counts the rays (5 bytes
    each), the held-out images (3 bytes a pixel, before compression) and, when the
    shuffle spills, its temporary blocks (id and color of every ray), which exist
    beside the cache until it is complete.
    """
    import shutil

    cams = scene.cameras
    n_rays = int(cams.pixels[scene.train].sum())
    id_bytes = 4 if n_rays < 2**32 else 8
    spills = n_rays > cache.memory_mb * 2**20 // shuffle.BUFFER_BYTES_PER_RAY
    need = 5 * n_rays + 3 * int(cams.pixels[scene.test].sum()) + (n_rays * (id_bytes + 3) if spills else 0)
    need = int(need * 1.02) + (1 << 20)  # HDF5's own structures
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise UserError(f"the ray cache {path} needs about {need / 2**20:,.1f} MiB (rays, held-out images"
                        + (", the shuffle's temporary blocks" if spills else "")
                        + f") but {path.parent} has {free / 2**20:,.1f} MiB free",
                        hint="free some space, write the cache elsewhere with --out, or make it smaller "
                             "(--ratio, cache.compression=lzf)")


def decode_for_cache(scene: Scene, i: int, options: dict) -> tuple[np.ndarray, list]:
    """Image ``i`` of ``scene`` decoded and resized to its camera.

    Returns:
        (H, W, 3) uint8, and the file's [size, mtime_ns, content hash] as read (for the fingerprint).
    """
    cams = scene.cameras
    path = cams.image_paths[i]
    if Path(path).exists():  # a regular file of a sane size: never a device or a FIFO that reads forever
        check_image_file(path)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = np.frombuffer(fh.read(), dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"image {path} disappeared while the cache was being built",
                        hint="run the command again once the images are in place") from None
    background = None if options["alpha"] == "error" else options["alpha_background"]
    img = decode_image(data, path, background)
    expected = (int(scene.source_width[i]), int(scene.source_height[i]))
    check_image_size(path, (img.shape[1], img.shape[0]), expected, options["ratio"],
                     scene.camera_files[0] if scene.camera_files else path)
    return resize_area(img, int(cams.width[i]), int(cams.height[i])), [st.st_size, st.st_mtime_ns,
                                                                          file_hash(data=data)]


def _write_cameras(f: h5py.File, scene: Scene) -> None:
    cams = scene.cameras
    g = f.create_group("cameras")
    for key in ("K", "c2w", "dist", "width", "height"):
        g.create_dataset(key, data=getattr(cams, key))
    g.create_dataset("source_width", data=scene.source_width)
    g.create_dataset("source_height", data=scene.source_height)
    g.create_dataset("names", data=np.array(cams.names, dtype=object), dtype=h5py.string_dtype())
    # absolute: eval reads the photos from another working directory too
    g.create_dataset("image_paths", data=np.array([str(Path(p).resolve()) for p in cams.image_paths], dtype=object),
                     dtype=h5py.string_dtype())
    f.create_dataset("split/train", data=scene.train)
    f.create_dataset("split/test", data=scene.test)
    f.create_dataset("transform", data=scene.transform)


class SceneMasks:
    """The masks of a scene's images, read at the size the cache holds; each file's [size, mtime_ns, hash] goes
    into its fingerprint record as it is read."""

    def __init__(self, scene: Scene, records: list):
        self.scene, self.records = scene, records
        self.row: dict[int, int] = {}  # camera -> its mask's record
        row = len(scene.camera_files) + len(scene.cameras)
        for i, m in enumerate(scene.masks):
            if m is not None:
                self.row[i], row = row, row + 1

    def keep(self, i: int) -> np.ndarray | None:
        """(H, W) bool: the pixels of camera ``i`` to use; None when it has no mask."""
        if i not in self.row:
            return None
        path, cams = self.scene.masks[i], self.scene.cameras
        check_image_file(path)
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = np.frombuffer(fh.read(), dtype=np.uint8)
        self.records[self.row[i]][1:] = [st.st_size, st.st_mtime_ns, file_hash(data=data)]
        return decode_mask(data, path, int(cams.width[i]), int(cams.height[i]))


def _write_cache(tmp: Path, scene: Scene, cache: CacheConfig, options: dict, records: list) -> int:
    cams = scene.cameras
    train = scene.train
    pixels = cams.pixels[train].astype(np.uint64)
    ray_offsets = np.concatenate([[0], np.cumsum(pixels)]).astype(np.uint64)  # ray ids are pixel ids
    masks = SceneMasks(scene, records)
    kept = pixels.copy()
    if masks.row:  # the rays are the unmasked pixels: counted first (masks are small), to size the datasets
        with progress_bar("reading masks", len(masks.row), "masks") as bar:
            for j, i in enumerate(train):
                if int(i) in masks.row:
                    kept[j] = int(masks.keep(int(i)).sum())
                    bar.advance()
    n_rays = int(kept.sum())
    n_buckets = max(1, -(-n_rays // cache.bucket_rays))
    buffer_rays = max(cache.memory_mb * 2**20 // shuffle.BUFFER_BYTES_PER_RAY, 1)
    id_dtype = np.uint32 if int(ray_offsets[-1]) < 2**32 else np.uint64
    filters = _FILTERS[cache.compression]
    train_pos = {int(i): j for j, i in enumerate(train)}
    blocks = BucketBlocks(n_buckets, id_dtype, tmp.with_name(tmp.name + ".runs.partial"))
    n_camera_files = len(scene.camera_files)

    def decode(i: int) -> tuple:
        img, stat = decode_for_cache(scene, i, options)
        records[n_camera_files + i][1:] = stat  # the fingerprint describes the bytes actually cached
        keep = masks.keep(i)
        if i not in train_pos:
            return i, (img, keep), None
        j = train_pos[i]  # the decoded image is dropped here: only its bucket-sorted copy travels on
        return i, None, bucket_sort_image(int(pixels[j]), n_buckets, cache.seed, j, img.reshape(-1, 3), id_dtype,
                                          None if keep is None else keep.reshape(-1))

    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(version=CACHE_VERSION, mip360_version=__version__, format=scene.format,
                           options=json.dumps(options), n_rays=n_rays, n_buckets=n_buckets, complete=False,
                           image_source=json.dumps(scene.image_source))
            for record, camera_file in zip(records, scene.camera_files):  # images: hashed as they are decoded
                record[3] = file_hash(Path(camera_file))
            _write_cameras(f, scene)
            test_group = f.create_group("test/images")
            # Pass 1: stream the images, assign each ray a random bucket, spill sorted blocks.
            buf: list[tuple] = []
            buffered = 0
            with progress_bar("reading images", len(cams), "images") as bar:
                for i, img, sorted_rays in ordered_map(decode, range(len(cams)), cache.workers):
                    if sorted_rays is not None:
                        buf.append((ray_offsets[train_pos[i]], *sorted_rays))
                        buffered += len(sorted_rays[0])
                        if buffered >= buffer_rays:
                            blocks.add(buf, spill=True)
                            buf, buffered = [], 0
                    else:
                        img, keep = img
                        k = f"{int(np.searchsorted(scene.test, i)):05d}"
                        ds = test_group.create_dataset(k, data=img, chunks=True, **_FILTERS["lzf"])
                        ds.attrs["crc32"] = crc32(img)
                        if keep is not None:  # eval scores only its unmasked pixels
                            keep = keep.astype(np.uint8)
                            ds = f.create_dataset(f"test/masks/{k}", data=keep, chunks=True, **_FILTERS["lzf"])
                            ds.attrs["crc32"] = crc32(keep)
                    trim_heap()
                    bar.advance()
            if buf:
                blocks.add(buf, spill=blocks.file is not None)
                buf = []
            # Pass 2: one bucket at a time, sorted by id, stored as gaps.
            g = f.create_group("rays")
            g.create_dataset("ray_offsets", data=ray_offsets)
            chunk = int(min(max(n_rays, 1), 1 << 18))
            gap_ds = g.create_dataset("gap", (n_rays,), dtype=np.uint16, chunks=(chunk,), **filters)
            overflow_rows, overflow_gaps = [], []
            rgb_ds = g.create_dataset("rgb", (n_rays, 3), dtype=np.uint8, chunks=(chunk, 3), **filters)
            bucket_offsets = np.zeros(n_buckets + 1, np.uint64)
            first_ids = np.zeros(n_buckets, np.uint64)
            checksums = np.zeros(n_buckets, np.uint32)
            pos = 0
            with progress_bar("shuffling rays", n_buckets, "buckets") as bar:
                for b in range(n_buckets):
                    ids, rgb = blocks.bucket(b)
                    m = len(ids)
                    if m:
                        first_ids[b] = ids[0]
                        gaps, rows, values = encode_gaps(ids)
                        checksums[b] = crc32(gaps, rgb)
                        gap_ds[pos:pos + m] = gaps
                        if len(rows):
                            overflow_rows.append(rows + pos)
                            overflow_gaps.append(values)
                        rgb_ds[pos:pos + m] = rgb
                    pos += m
                    bucket_offsets[b + 1] = pos
                    bar.advance()
            if pos != n_rays:  # a bug, not user input: never write a cache that lost rays
                raise RuntimeError(f"ray cache lost rays: wrote {pos} of {n_rays}")
            g.create_dataset("bucket_offsets", data=bucket_offsets)
            g.create_dataset("bucket_first_id", data=first_ids)
            g.create_dataset("overflow_row", data=np.concatenate([np.zeros(0, np.int64), *overflow_rows]))
            g.create_dataset("overflow_gap", data=np.concatenate([np.zeros(0, np.int64), *overflow_gaps]))
            g.create_dataset("bucket_crc32", data=checksums)
            f.attrs["index_crc32"] = index_checksum(f)
            f.attrs.update(inputs=json.dumps(records), fingerprint=fingerprint(options, records))
            f.attrs["complete"] = True
    finally:
        blocks.close()
    return n_rays
