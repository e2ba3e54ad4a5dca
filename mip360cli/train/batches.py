"""Random training rays streamed from the ray cache, resumable from a step number."""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from ..data.cache import RayCache
from ..core.errors import UserError


def too_few_buckets(path, n_buckets: int, n_rays: int, processes: int) -> UserError:
    """The error for a cache with fewer buckets than processes, with a bucket size that works."""
    size = max(1024, n_rays // (4 * processes))
    return UserError(
        f"the ray cache {path} has {n_buckets} bucket(s), fewer than the {processes} processes that "
        "each read their own share of them",
        hint=f"rebuild it with smaller buckets: add cache.bucket_rays={size} to this command (given a dataset "
             f"folder), or run `mip360 preprocess DATA cache.bucket_rays={size}` first")


class RayBatcher:
    """Batches of random rays for one data shard.

    Shard ``shard`` of ``num_shards`` reads, in epoch e, the buckets
    ``perm_e[shard::num_shards]`` (``perm_e`` a permutation seeded by (seed, e)),
    each read whole (one contiguous read) and permuted in memory by a generator
    seeded by (seed, e, bucket). Every bucket is a uniform sample of all
    training rays, so each batch draws from all images.

    The stream is a pure function of (seed, shard, num_shards), so the position
    after k batches is found by arithmetic on bucket sizes (:meth:`seek`):
    resuming needs only the step number.
    """

    def __init__(self, cache: RayCache, shard: int, num_shards: int, batch: int, seed: int):
        if cache.n_buckets < num_shards:
            raise too_few_buckets(cache.path, cache.n_buckets, cache.n_rays, num_shards)
        self.cache, self.shard, self.num_shards, self.batch, self.seed = cache, shard, num_shards, batch, seed
        self.sizes = np.diff(cache.bucket_offsets)
        self.epoch, self.index, self.offset = 0, 0, 0
        self._loaded: tuple[int, int] | None = None
        self._data: tuple[np.ndarray, ...] | None = None

    def _buckets(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.cache.n_buckets)
        return perm[self.shard::self.num_shards]

    def seek(self, batches: int) -> None:
        """Position the stream after ``batches`` batches from the start."""
        remaining = batches * self.batch
        self.epoch, self.index, self.offset = 0, 0, 0
        while True:
            buckets = self._buckets(self.epoch)
            sizes = self.sizes[buckets]
            total = int(sizes.sum())
            if remaining >= total:
                remaining -= total
                self.epoch += 1
                continue
            ends = np.cumsum(sizes)
            self.index = int(np.searchsorted(ends, remaining, side="right"))
            self.offset = int(remaining - (ends[self.index - 1] if self.index else 0))
            return

    def position(self) -> dict:
        return {"epoch": self.epoch, "bucket_index": self.index, "offset": self.offset}

    def _bucket_data(self) -> tuple[np.ndarray, ...]:
        bucket = int(self._buckets(self.epoch)[self.index])
        if self._loaded != (self.epoch, bucket):
            camera, u, v, rgb = self.cache.read_bucket(bucket)
            perm = np.random.default_rng([self.seed, self.epoch, bucket]).permutation(len(camera))
            self._data = (camera[perm].astype(np.int32), u[perm].astype(np.int32), v[perm].astype(np.int32),
                          rgb[perm])
            self._loaded = (self.epoch, bucket)
        return self._data

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The next batch: camera (B,), u (B,), v (B,) int32 and rgb (B, 3) uint8."""
        parts = []
        need = self.batch
        while need > 0:
            data = self._bucket_data()
            take = min(need, len(data[0]) - self.offset)
            parts.append(tuple(x[self.offset:self.offset + take] for x in data))
            self.offset += take
            need -= take
            if self.offset >= len(data[0]):
                self.offset = 0
                self.index += 1
                if self.index >= len(self._buckets(self.epoch)):
                    self.index, self.epoch = 0, self.epoch + 1
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(x) for x in zip(*parts))


class Prefetcher:
    """The batches of one or more shards, read ahead in a background thread.

    The thread reads (HDF5) and permutes the next ``depth`` batches while the
    device trains on the current one; on CUDA they wait in pinned memory and are
    copied with ``non_blocking``. The order is exactly that of the batchers'
    ``next()``: a resumed run still sees the same stream.

    Args:
        batchers: one per shard read by this process; a batch concatenates theirs.
        device: where :meth:`next` puts the tensors.
    """

    def __init__(self, batchers: list[RayBatcher], device: torch.device, depth: int = 2):
        self.batchers, self.device = batchers, device
        self.pin = device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mip360-batches", daemon=True)
        self._thread.start()

    def _read(self) -> tuple[tuple[torch.Tensor, ...], list[dict]]:
        parts = [b.next() for b in self.batchers]
        arrays = parts[0] if len(parts) == 1 else tuple(np.concatenate(x) for x in zip(*parts))
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
        if self.pin:
            tensors = tuple(t.pin_memory() for t in tensors)
        return tensors, [b.position() for b in self.batchers]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item: object = self._read()
            except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[dict]]:
        """camera (B,) int64, u (B,), v (B,) int32 and rgb (B, 3) uint8 on the device, and the
        batchers' positions after this batch."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        (cam, u, v, rgb), positions = item
        nb = self.pin
        return (cam.to(self.device, non_blocking=nb).long(), u.to(self.device, non_blocking=nb),
                v.to(self.device, non_blocking=nb), rgb.to(self.device, non_blocking=nb), positions)

    def close(self) -> None:
        """Stop the thread (it finishes the read it is in)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
