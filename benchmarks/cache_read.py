"""What the ray cache's checksums cost: reading every bucket with and without checking its CRC-32.

Builds a cache of the example scene (``--images`` views of ``--size``), then reads all its buckets
as training does (``RayCache.read_bucket``), alternating rounds with the check on and off (the
same file, warm in the page cache, so the figure is the check against the read's own work, the
worst case: a cold disk makes the check's share smaller). Prints rays/s of both and the overhead.

    python benchmarks/cache_read.py --images 40 --size 640x480 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mip360cli.config import CacheConfig, DataConfig
from mip360cli.data.cache import RayCache, build_cache
from mip360cli.data.example import make_example


def read_all(cache: RayCache, check: bool) -> float:
    saved = cache.bucket_crc
    cache.bucket_crc = saved if check else None
    t0 = time.perf_counter()
    for b in range(cache.n_buckets):
        cache.read_bucket(b)
    cache.bucket_crc = saved
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--bucket-rays", type=int, default=1 << 20)
    ap.add_argument("--compression", default="none", choices=["none", "lzf", "gzip"])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    root = Path(tempfile.mkdtemp(prefix="mip360-cache-read-"))
    make_example(root / "scene", "colmap", args.images, w, h)
    path = build_cache(root / "scene", DataConfig(), CacheConfig(bucket_rays=args.bucket_rays,
                                                                  compression=args.compression),
                       out=root / "c.h5").path
    with RayCache(path) as cache:
        read_all(cache, True)  # warm the page cache
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for check in (False, True):
                times[check].append(read_all(cache, check))
        n = cache.n_rays
        plain, checked = statistics.median(times[False]), statistics.median(times[True])
        print(f"{n:,} rays in {cache.n_buckets} buckets ({args.compression}), median of {args.rounds} rounds")
        print(f"without the check {n / plain:>14,.0f} rays/s")
        print(f"with the check    {n / checked:>14,.0f} rays/s   (+{100 * (checked / plain - 1):.1f}% time)")


if __name__ == "__main__":
    main()
