"""The external shuffle: every ray into a random bucket, in bounded memory.

Images are bucket-sorted one at a time (in the decoding threads), gathered into bucket-major
blocks of at most ``cache.memory_mb``, and spilled to a temporary HDF5 file when the buffer is
full; the writer then reads one bucket at a time from all blocks.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import h5py
import numpy as np

# Bytes per buffered ray during the shuffle: id (4-8) + rgb (3) + bucket (2-4), about doubled for the
# sorted copies made when a block is spilled.
BUFFER_BYTES_PER_RAY = 32


def bucket_sort_image(pixels: int, n_buckets: int, seed: int, index: int, rgb: np.ndarray, id_dtype,
                      keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give each pixel of one image a random bucket and order the pixels by bucket.

    Runs in the decoding threads (numpy's sort and take release the GIL). The
    generator is seeded by (seed, index), so the result does not depend on
    thread scheduling. The sort is stable: within a bucket, pixels stay in order.

    Args:
        rgb: (P, 3) uint8 colors of the image's pixels in raster order.
        keep: (P,) bool, the pixels to keep (a mask), or None for all. Every pixel draws its bucket
            either way, so an image's kept pixels go where they would without the mask.
    Returns:
        pix: (K,) kept pixel indices ordered by bucket; rgb: (K, 3) likewise; counts: (B,) rays per bucket.
    """
    label_dtype = np.uint16 if n_buckets <= 2**16 else np.int32
    labels = np.random.default_rng([seed, index]).integers(0, n_buckets, pixels, dtype=label_dtype)
    order = np.argsort(labels, kind="stable")  # a radix sort for uint16 labels
    if keep is not None:
        order = order[keep[order]]
        labels = labels[keep]
    counts = np.bincount(labels, minlength=n_buckets)
    return order.astype(id_dtype), np.take(rgb, order, axis=0), counts


class BucketBlocks:
    """Bucket-major blocks of rays (the "runs" of an external sort): kept in memory, or spilled to a
    temp HDF5 file.

    Invariant that spares all sorting by ray id: images arrive in order, each
    image's pixels are stably sorted by bucket, and a block places, for every
    bucket, the images' segments one after the other; so a bucket's rays are in
    id order within a block, and the blocks of a bucket concatenated in order are too.
    """

    def __init__(self, n_buckets: int, id_dtype, spill_path: Path):
        self.n_buckets, self.id_dtype, self.spill_path = n_buckets, id_dtype, spill_path
        self.file: h5py.File | None = None
        self.blocks: list[tuple] = []

    def add(self, images: list[tuple], spill: bool) -> None:
        """Interleave bucket-sorted images into one bucket-major block.

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
            g = self.file.create_group(f"block{len(self.blocks)}")
            ids, rgb = g.create_dataset("ids", data=ids), g.create_dataset("rgb", data=rgb)
        self.blocks.append((offsets, ids, rgb))

    def bucket(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """All rays of bucket ``b``, in id order: ids (m,), rgb (m, 3)."""
        parts = [(ids[o[b]:o[b + 1]], rgb[o[b]:o[b + 1]]) for o, ids, rgb in self.blocks if o[b + 1] > o[b]]
        if not parts:
            return np.zeros(0, self.id_dtype), np.zeros((0, 3), np.uint8)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        with contextlib.suppress(FileNotFoundError):
            self.spill_path.unlink()


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


def trim_heap() -> None:
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
