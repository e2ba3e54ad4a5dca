"""The cache's format: its version numbers, its default name, and the gap encoding of ray ids.

A bucket stores its rays sorted by id, so ids are stored as uint16 gaps from the previous row
(the mean gap is the number of buckets), with the rare larger gaps in a small overflow table.
"""

from __future__ import annotations

import zlib

import numpy as np

CACHE_VERSION = 3
"""The file format: 3 adds checksums (a CRC-32 per bucket, per held-out image, and one of the index)."""
READABLE_VERSIONS = (1, 2, 3)  # 1 and 2: no checksums (1 also no content hashes of its inputs)
LAYOUT_VERSION = 2
"""What the rays are (which buckets, in which order): unchanged since version 2, so a cache rebuilt as
version 3 has the same fingerprint and a run trained on a version 2 cache resumes on it."""
DEFAULT_NAME = "mip360_cache.h5"

# What the index checksum covers: every dataset and attribute read whole when a cache is opened.
INDEX_DATASETS = ("rays/ray_offsets", "rays/bucket_offsets", "rays/bucket_first_id", "rays/overflow_row",
                  "rays/overflow_gap", "rays/bucket_crc32", "split/train", "split/test", "transform", "cameras/K",
                  "cameras/c2w", "cameras/dist", "cameras/width", "cameras/height", "cameras/source_width",
                  "cameras/source_height", "cameras/names", "cameras/image_paths")
INDEX_ATTRS = ("format", "options", "n_rays", "n_buckets")


def index_checksum(f) -> int:
    """CRC-32 of a cache's index (:data:`INDEX_DATASETS` and :data:`INDEX_ATTRS` of the h5py file ``f``);
    a missing dataset or attribute raises KeyError."""
    parts = []
    for name in INDEX_DATASETS:
        data = f[name][()]
        if data.dtype.kind == "O":  # strings
            data = np.frombuffer("\0".join(x.decode() if isinstance(x, bytes) else str(x) for x in data).encode(),
                                 np.uint8)
        parts.append(data)
    parts += [np.frombuffer(str(f.attrs[name]).encode(), np.uint8) for name in INDEX_ATTRS]
    return crc32(*parts)


def crc32(*arrays: np.ndarray) -> int:
    """CRC-32 of arrays' bytes, in order (zlib's: about 1-2 GB/s)."""
    value = 0
    for a in arrays:
        value = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"), value)
    return value

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
