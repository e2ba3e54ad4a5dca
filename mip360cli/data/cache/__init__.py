"""The HDF5 ray cache: a streaming, bounded-memory writer and a chunked reader.

Modules: ``format`` (versions, the gap encoding of ray ids), ``fingerprint`` (what a cache was built
from and whether it is stale, the options a later command adopts), ``shuffle`` (the external
shuffle into buckets, spilled to disk), ``writer`` (``build_cache``) and ``reader`` (``RayCache``).

Layout (format version 2)::

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

from .fingerprint import adopt_cache_options, option_fields, stored_info
from .format import CACHE_VERSION, DEFAULT_NAME, READABLE_VERSIONS
from .reader import RayCache
from .writer import CacheSummary, build_cache, check_free_space, default_cache_path

__all__ = ["CACHE_VERSION", "DEFAULT_NAME", "READABLE_VERSIONS", "CacheSummary", "RayCache", "adopt_cache_options",
           "build_cache", "check_free_space", "default_cache_path", "option_fields", "stored_info"]
