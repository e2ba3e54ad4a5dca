"""The HDF5 ray cache: a streaming, bounded-memory writer and a chunked reader.

Layout (format version 1)::

    /cameras/{K, c2w, dist, width, height, names, image_paths, source_width, source_height}
    /split/{train, test}          camera indices
    /transform                    (4, 4) input world -> normalized world
    /rays/ray_offsets             (n_train + 1,) uint64: first ray id of each training image
    /rays/bucket_offsets          (B + 1,) uint64: first row of each bucket
    /rays/bucket_first_id         (B,) uint64: ray id of each bucket's first row
    /rays/gap                     (R,) uint16: ray id minus the previous row's (0 at a bucket start)
    /rays/overflow_row, overflow_gap  (K,) int64: the rare gaps > 65535 (stored as 0 in ``gap``)
    /rays/rgb                     (R, 3) uint8
    /test/images/NNNNN            (H, W, 3) uint8 per held-out image
    attrs: version, fingerprint, format, options (JSON), inputs (JSON), n_rays, n_buckets

A ray id is ``ray_offsets[j] + v * W + u`` for pixel (u, v) of training image
``j`` (``split/train[j]`` is its camera). Every ray falls into one of B
buckets at random; a bucket stores its rays sorted by id, which makes the ids
cheap to store as gaps: the mean gap is the number of buckets, so 16 bits
hold all but a vanishing fraction (kept in a small overflow table); 5 bytes
per ray before compression. Training reads whole buckets (large contiguous reads) and shuffles
inside what it has read, so every batch draws from all images.

Memory: images are decoded one at a time (a few in flight with
``cache.workers``); rays go into a buffer of at most ``cache.memory_mb``; a
full buffer is sorted by bucket and spilled to a temporary HDF5 file; the
second pass assembles one bucket at a time. Peak memory is bounded by the
budget and the bucket size, not by the number of images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import h5py
import numpy as np

from ..core.version import __version__
from ..config import CacheConfig, DataConfig
from ..core.errors import UserError
from ..core.files import atomic_path, ensure_writable_dir, leftover_temp_files, process_lock
from ..core.progress import info, progress_bar
from .cameras import Cameras
from .images import decode_image, resize_area
from .scene import Scene, check_image_size, load_scene

CACHE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 has the same layout, without content hashes of its inputs
DEFAULT_NAME = "mip360_cache.h5"
# Bytes per buffered ray during the shuffle: id (4-8) + rgb (3) + bucket (2-4), about doubled for the
# sorted copies made when a run is spilled.
_BUFFER_BYTES_PER_RAY = 32
_FILTERS = {"lzf": dict(compression="lzf", shuffle=True), "gzip": dict(compression="gzip", compression_opts=4,
                                                                        shuffle=True), "none": {}}


# ----------------------------------------------------------------------------- fingerprint

# The options that change what a cache holds, and the config keys they come from (speed knobs such as
# workers or memory_mb are not among them).
OPTION_KEYS = {
    "format": "data.format", "ratio": "data.ratio", "frame_interval": "data.frame_interval",
    "test_every": "data.test_every", "easymocap_frame": "data.easymocap_frame", "alpha": "data.alpha",
    "alpha_background": "data.alpha_background", "bucket_rays": "cache.bucket_rays", "seed": "cache.seed",
    "compression": "cache.compression",
}


def option_fields(data: DataConfig, cache: CacheConfig) -> Iterator[tuple[str, str, object, str]]:
    """(option name, dotted key, config section object, field name) of every cache option."""
    sections = {"data": data, "cache": cache}
    for name, key in OPTION_KEYS.items():
        section, field = key.split(".")
        yield name, key, sections[section], field


def cache_options(data: DataConfig, cache: CacheConfig, fmt: str) -> dict:
    """The options that change what the cache holds (``fmt``: the format actually read)."""
    options = {"version": CACHE_VERSION}
    options.update({name: getattr(obj, field) for name, _, obj, field in option_fields(data, cache)})
    options["format"] = fmt
    return options


def adopt_cache_options(path: Path, data: DataConfig, cache: CacheConfig, explicit: set[str]
                        ) -> tuple[DataConfig, CacheConfig, list[str]]:
    """Take the options of the cache at ``path`` for every key the user did not give explicitly.

    What ``mip360 preprocess`` built is what later commands use: a ratio or split
    given once to preprocess is not undone by a config that does not mention it.

    Args:
        explicit: dotted keys given on the command line (``data.ratio``); these win.
    Returns:
        the data and cache sections with the cache's options, and ``key value`` lines of
        what was taken (empty when there is no readable cache or nothing differed).
    """
    found = stored_info(path)
    if found is None:
        return data, cache, []
    stored = found["options"]
    data, cache = dataclasses.replace(data), dataclasses.replace(cache)
    adopted = []
    for name, key, obj, field in option_fields(data, cache):
        if key in explicit or name not in stored:
            continue
        value, current = stored[name], getattr(obj, field)
        if current != value:
            setattr(obj, field, value)
            if not (name == "format" and current == "auto"):  # auto would find it too, unless there are two
                adopted.append(f"{key}={value}")
    return data, cache, adopted


def stored_info(path: Path) -> dict | None:
    """``options`` (dict), ``n_rays`` and ``n_buckets`` of a complete cache at ``path``; None when there is
    none or it cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False) or "options" not in f.attrs:
                return None
            return {"options": json.loads(f.attrs["options"]), "n_rays": int(f.attrs["n_rays"]),
                    "n_buckets": int(f.attrs["n_buckets"])}
    except (OSError, ValueError, KeyError):
        return None


def file_hash(path: Path | None = None, data: bytes | np.ndarray | None = None) -> str:
    """Content hash of a file (or of its bytes, already read)."""
    h = hashlib.blake2b(digest_size=16)
    if data is not None:
        h.update(memoryview(data))
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def input_files(scene: Scene, root: Path) -> list[tuple[str, Path]]:
    """(name, path) of every camera file and selected image; names relative to ``root`` when inside it."""
    out = []
    for p in (*scene.camera_files, *scene.cameras.image_paths):
        try:
            name = str(Path(p).resolve().relative_to(root.resolve()))
        except ValueError:
            name = str(Path(p).resolve())
        out.append((name, Path(p)))
    return out


def fingerprint(options: dict, records: list[list]) -> str:
    """A hash of the options and the inputs' names and contents (not their times: a copy keeps it)."""
    blob = json.dumps({"options": options, "inputs": [[r[0], r[3]] for r in records]}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def current_records(inputs: list[tuple[str, Path]], stored: list[list]) -> tuple[list[list], int]:
    """[name, size, mtime_ns, content hash] of the inputs now, hashing only where it can matter.

    A file whose size and modification time match the stored record keeps the
    stored hash; one whose size matches but time differs (``touch``, ``cp``, rsync
    without times) is hashed again; one whose size differs has changed (hash None).
    Returns (records, number of files hashed).
    """
    old = {r[0]: r for r in stored if len(r) >= 4}
    records, hashed = [], 0
    for name, p in inputs:
        st = os.stat(p)
        prev = old.get(name)
        digest = None
        if prev is not None and prev[1] == st.st_size:
            if prev[2] == st.st_mtime_ns:
                digest = prev[3]
            else:
                digest, hashed = file_hash(p), hashed + 1
        records.append([name, st.st_size, st.st_mtime_ns, digest])
    return records, hashed


def describe_changes(old_options: dict, old_records: list, options: dict, records: list,
                     explicit: set[str] = frozenset()) -> list[str]:
    """Human-readable reasons why a cache no longer matches its inputs."""
    reasons = []
    for k in sorted(set(options) | set(old_options)):
        if old_options.get(k) != options.get(k):
            given = " (given on the command line)" if OPTION_KEYS.get(k) in explicit else ""
            reasons.append(f"option {k}: {old_options.get(k)!r} -> {options.get(k)!r}{given}")
    old = {r[0]: r[3] if len(r) >= 4 else None for r in old_records}
    new = {r[0]: r[3] for r in records}
    for label, names in (("added", sorted(set(new) - set(old))), ("removed", sorted(set(old) - set(new))),
                         ("modified", sorted(k for k in set(new) & set(old) if new[k] is None or new[k] != old[k]))):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            reasons.append(f"{len(names)} input file(s) {label}: {shown}")
    return reasons


# ----------------------------------------------------------------------------- building


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


def check_cache(path: Path, options: dict, inputs: list[tuple[str, Path]], explicit: set[str] = frozenset()
                ) -> tuple[list[str] | None, list[list]]:
    """Is ``path`` an up-to-date cache for these options and inputs?

    Returns (None if it is, else the reasons it is not; the inputs' current records).
    """
    if not path.exists():
        return ["no cache yet"], current_records(inputs, [])[0]
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("version")
            if version != CACHE_VERSION:
                return ([f"cache format version {version} (this mip360 writes {CACHE_VERSION}, "
                         "with content hashes of its inputs)"], current_records(inputs, [])[0])
            old_options, stored = json.loads(f.attrs["options"]), json.loads(f.attrs["inputs"])
            stored_fingerprint, complete = f.attrs.get("fingerprint"), bool(f.attrs.get("complete", False))
    except (OSError, KeyError, ValueError) as e:
        return [f"existing file is not a readable cache ({e})"], current_records(inputs, [])[0]
    records, hashed = current_records(inputs, stored)
    if complete and all(r[3] is not None for r in records) and fingerprint(options, records) == stored_fingerprint:
        if hashed:
            info(f"{hashed} input file(s) have new modification times but the same content (checked by hash): "
                 f"{path.name} is kept")
        return None, records
    return describe_changes(old_options, stored, options, records, explicit) or ["inputs changed"], records


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
    options = cache_options(data, cache, scene.format)
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
    shuffle spills, its temporary runs (id and color of every ray), which exist
    beside the cache until it is complete.
    """
    import shutil

    cams = scene.cameras
    n_rays = int(cams.pixels[scene.train].sum())
    id_bytes = 4 if n_rays < 2**32 else 8
    spills = n_rays > cache.memory_mb * 2**20 // _BUFFER_BYTES_PER_RAY
    need = 5 * n_rays + 3 * int(cams.pixels[scene.test].sum()) + (n_rays * (id_bytes + 3) if spills else 0)
    need = int(need * 1.02) + (1 << 20)  # HDF5's own structures
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise UserError(f"the ray cache {path} needs about {need / 2**20:,.1f} MiB (rays, held-out images"
                        + (", the shuffle's temporary runs" if spills else "")
                        + f") but {path.parent} has {free / 2**20:,.1f} MiB free",
                        hint="free some space, write the cache elsewhere with --out, or make it smaller "
                             "(--ratio, cache.compression=lzf)")


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Image-sized buffers freed by the decode threads otherwise stay in per-thread
    heaps that fragment, and peak RSS creeps up with the number of images. Unlike
    fixing glibc's mmap threshold, trimming changes no allocator policy, so a
    process that trains afterwards keeps torch's allocations fast.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` on ``workers`` threads, in order, at most ``workers + 1`` results ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    ex = ThreadPoolExecutor(workers)
    try:
        pending = deque(ex.submit(fn, x) for x in islice(it, workers + 1))
        while pending:
            result = pending.popleft().result()
            for x in islice(it, 1):
                pending.append(ex.submit(fn, x))
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def decode_for_cache(scene: Scene, i: int, options: dict) -> tuple[np.ndarray, list]:
    """Image ``i`` of ``scene`` decoded and resized to its camera.

    Returns:
        (H, W, 3) uint8, and the file's [size, mtime_ns, content hash] as read (for the fingerprint).
    """
    cams = scene.cameras
    path = cams.image_paths[i]
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


def bucket_sort_image(pixels: int, n_buckets: int, seed: int, index: int, rgb: np.ndarray, id_dtype
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give each pixel of one image a random bucket and order the pixels by bucket.

    Runs in the decoding threads (numpy's sort and take release the GIL). The
    generator is seeded by (seed, index), so the result does not depend on
    thread scheduling. The sort is stable: within a bucket, pixels stay in order.

    Args:
        rgb: (P, 3) uint8 colors of the image's pixels in raster order.
    Returns:
        pix: (P,) pixel indices ordered by bucket; rgb: (P, 3) likewise; counts: (B,) rays per bucket.
    """
    label_dtype = np.uint16 if n_buckets <= 2**16 else np.int32
    labels = np.random.default_rng([seed, index]).integers(0, n_buckets, pixels, dtype=label_dtype)
    order = np.argsort(labels, kind="stable")  # a radix sort for uint16 labels
    counts = np.bincount(labels, minlength=n_buckets)
    return order.astype(id_dtype), np.take(rgb, order, axis=0), counts


class _Runs:
    """Bucket-major runs of rays: kept in memory, or spilled to a temp HDF5 file.

    Invariant that spares all sorting by ray id: images arrive in order, each
    image's pixels are stably sorted by bucket, and a run places, for every
    bucket, the images' segments one after the other; so a bucket's rays are in
    id order within a run, and the runs of a bucket concatenated in order are too.
    """

    def __init__(self, n_buckets: int, id_dtype, spill_path: Path):
        self.n_buckets, self.id_dtype, self.spill_path = n_buckets, id_dtype, spill_path
        self.file: h5py.File | None = None
        self.runs: list[tuple] = []

    def add(self, images: list[tuple], spill: bool) -> None:
        """Interleave bucket-sorted images into one bucket-major run.

        Args:
            images: (first ray id, pix (P,), rgb (P, 3), counts (B,)) per image, in id order.
        """
        counts = np.stack([im[3] for im in images]).astype(np.int64)  # (k, B)
        offsets = np.zeros(self.n_buckets + 1, np.int64)
        np.cumsum(counts.sum(0), out=offsets[1:])
        starts = offsets[:-1] + np.cumsum(counts, axis=0) - counts  # where image i's bucket b goes
        ids = np.empty(offsets[-1], self.id_dtype)
        rgb = np.empty((offsets[-1], 3), np.uint8)
        for i, (first, pix, col, cnt) in enumerate(images):
            seg = np.concatenate([[0], np.cumsum(cnt)])
            for b in np.flatnonzero(cnt):
                dst, src, n = starts[i, b], seg[b], cnt[b]
                np.add(pix[src:src + n], first, out=ids[dst:dst + n], casting="unsafe")
                rgb[dst:dst + n] = col[src:src + n]
        if spill:
            if self.file is None:
                self.file = h5py.File(self.spill_path, "w")
            g = self.file.create_group(f"run{len(self.runs)}")
            ids, rgb = g.create_dataset("ids", data=ids), g.create_dataset("rgb", data=rgb)
        self.runs.append((offsets, ids, rgb))

    def bucket(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """All rays of bucket ``b``, in id order: ids (m,), rgb (m, 3)."""
        parts = [(ids[o[b]:o[b + 1]], rgb[o[b]:o[b + 1]]) for o, ids, rgb in self.runs if o[b + 1] > o[b]]
        if not parts:
            return np.zeros(0, self.id_dtype), np.zeros((0, 3), np.uint8)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        with contextlib.suppress(FileNotFoundError):
            self.spill_path.unlink()


_GAP_LIMIT = 2**16 - 1


def encode_gaps(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ray ids of one bucket -> uint16 gaps plus the overflowing ones.

    Args:
        ids: (m,) increasing ray ids.
    Returns:
        gaps: (m,) uint16, 0 for the first row and for every overflowing gap;
        rows: (k,) int64 rows whose gap exceeds the uint16 range; values: (k,) their gaps.
    """
    gaps = np.diff(ids.astype(np.int64), prepend=int(ids[0]) if len(ids) else 0)
    rows = np.flatnonzero(gaps > _GAP_LIMIT)
    values = gaps[rows]
    gaps[rows] = 0
    return gaps.astype(np.uint16), rows, values


def decode_ids(gaps: np.ndarray, first_id: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_gaps`: (m,) int64 ray ids."""
    full = gaps.astype(np.int64)
    full[rows] = values
    return np.cumsum(full) + first_id


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


def _write_cache(tmp: Path, scene: Scene, cache: CacheConfig, options: dict, records: list) -> int:
    cams = scene.cameras
    train = scene.train
    pixels = cams.pixels[train].astype(np.uint64)
    ray_offsets = np.concatenate([[0], np.cumsum(pixels)]).astype(np.uint64)
    n_rays = int(ray_offsets[-1])
    n_buckets = max(1, -(-n_rays // cache.bucket_rays))
    buffer_rays = max(cache.memory_mb * 2**20 // _BUFFER_BYTES_PER_RAY, 1)
    id_dtype = np.uint32 if n_rays < 2**32 else np.uint64
    filters = _FILTERS[cache.compression]
    train_pos = {int(i): j for j, i in enumerate(train)}
    runs = _Runs(n_buckets, id_dtype, tmp.with_name(tmp.name + ".runs.partial"))
    n_camera_files = len(records) - len(cams)

    def decode(i: int) -> tuple:
        img, stat = decode_for_cache(scene, i, options)
        records[n_camera_files + i][1:] = stat  # the fingerprint describes the bytes actually cached
        if i not in train_pos:
            return i, img, None
        j = train_pos[i]  # the decoded image is dropped here: only its bucket-sorted copy travels on
        return i, None, bucket_sort_image(int(pixels[j]), n_buckets, cache.seed, j, img.reshape(-1, 3), id_dtype)

    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(version=CACHE_VERSION, mip360_version=__version__, format=scene.format,
                           options=json.dumps(options), n_rays=n_rays, n_buckets=n_buckets, complete=False)
            for record, camera_file in zip(records, scene.camera_files):  # images: hashed as they are decoded
                record[3] = file_hash(Path(camera_file))
            _write_cameras(f, scene)
            test_group = f.create_group("test/images")
            # Pass 1: stream the images, assign each ray a random bucket, spill sorted runs.
            buf: list[tuple] = []
            buffered = 0
            with progress_bar("reading images", len(cams), "images") as bar:
                for i, img, sorted_rays in ordered_map(decode, range(len(cams)), cache.workers):
                    if sorted_rays is not None:
                        buf.append((ray_offsets[train_pos[i]], *sorted_rays))
                        buffered += len(sorted_rays[0])
                        if buffered >= buffer_rays:
                            runs.add(buf, spill=True)
                            buf, buffered = [], 0
                    else:
                        test_group.create_dataset(f"{int(np.searchsorted(scene.test, i)):05d}", data=img,
                                                  chunks=True, **_FILTERS["lzf"])
                    _trim_heap()
                    bar.advance()
            if buf:
                runs.add(buf, spill=runs.file is not None)
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
            pos = 0
            with progress_bar("shuffling rays", n_buckets, "buckets") as bar:
                for b in range(n_buckets):
                    ids, rgb = runs.bucket(b)
                    m = len(ids)
                    if m:
                        first_ids[b] = ids[0]
                        gaps, rows, values = encode_gaps(ids)
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
            f.attrs.update(inputs=json.dumps(records), fingerprint=fingerprint(options, records))
            f.attrs["complete"] = True
    finally:
        runs.close()
    return n_rays


# ----------------------------------------------------------------------------- reading


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


def summary_lines(s: CacheSummary) -> list[str]:
    return [
        f"cache      {s.path} ({s.status})",
        f"format     {s.source}",
        f"options    ratio {s.data.ratio}, frame_interval {s.data.frame_interval}, test_every {s.data.test_every}",
        f"images     {s.images} ({s.train_images} train, {s.test_images} test)",
        f"rays       {s.rays:,} ({s.bytes_per_ray:.2f} bytes/ray, {s.bytes / 2**20:,.1f} MiB)",
        f"time       {s.seconds:.1f} s",
    ]

