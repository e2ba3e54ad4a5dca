"""The cache's format: its version numbers, its default name, and the gap encoding of ray ids.

A bucket stores its rays sorted by id, so ids are stored as uint16 gaps from the previous row
(the mean gap is the number of buckets), with the rare larger gaps in a small overflow table.
"""

from __future__ import annotations

import numpy as np

CACHE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 has the same layout, without content hashes of its inputs
DEFAULT_NAME = "mip360_cache.h5"

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
