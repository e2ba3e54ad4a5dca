"""Preprocess benchmark: throughput, bytes/ray and peak memory on synthetic FHD sets.

Writes N and 4N synthetic 1920x1080 photos (JPEG and PNG) with COLMAP cameras,
then for each set runs, in separate processes so peak RSS is per run:

  * decode only: every image decoded with the same thread count (the baseline),
  * ``mip360 preprocess`` with a fixed memory budget.

Prints images/s of both and their ratio, bytes per cached ray and peak RSS,
and the 4N / N peak-RSS ratio (flat memory means ~1.0).

    python benchmarks/preprocess.py --n 8 --workers 2 --memory-mb 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from mip360cli.data.example import ring_cameras
from mip360cli.data.formats import colmap

W, H = 1920, 1080


def synthetic_photo(rng: np.random.Generator) -> np.ndarray:
    """Photo-like content: smooth color fields, mid-frequency texture and sensor noise."""
    low = cv2.resize(rng.uniform(0, 255, (9, 16, 3)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    mid = cv2.resize(rng.normal(0, 40, (135, 240, 3)).astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    noise = rng.normal(0, 3, (H, W, 3)).astype(np.float32)
    return np.clip(low + mid + noise, 0, 255).astype(np.uint8)


def write_set(root: Path, n: int, ext: str, sources: list[Path]) -> Path:
    """A COLMAP dataset of the first ``n`` photos of ``sources`` (hard links, no copies)."""
    folder = root / f"{ext}_{n}"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for p in sources[:n]:
        dst = folder / "images" / p.name
        if not dst.exists():
            os.link(p, dst)
    cams = ring_cameras(n, W, H)
    colmap.write(folder, cams.replace(names=tuple(p.name for p in sources[:n])))
    return folder


def timed_child(cmd: list[str]) -> tuple[float, int, str]:
    """Run ``cmd``; return (wall seconds, peak RSS bytes of that process, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024, out


DECODE_ONLY = """
import sys, time
from pathlib import Path
from mip360cli.data.cache.shuffle import ordered_map
from mip360cli.data.images import read_image, list_images
files = list_images(Path(sys.argv[1]) / "images")
t = time.perf_counter()
for _ in ordered_map(read_image, files, int(sys.argv[2])):
    pass
print(time.perf_counter() - t)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="small set size N (the large one is 4N)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=128)
    ap.add_argument("--formats", default="jpg,png")
    ap.add_argument("--compression", default="none", choices=["none", "lzf", "gzip"])
    ap.add_argument("--work", type=Path, default=Path("bench-out/preprocess"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic images")
    args = ap.parse_args()

    rows = []
    rng = np.random.default_rng(0)
    for ext in args.formats.split(","):
        src = args.work / f"src_{ext}"
        src.mkdir(parents=True, exist_ok=True)
        sources = []
        for i in range(4 * args.n):
            p = src / f"{i:04d}.{ext}"
            if not p.exists():
                params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
                cv2.imwrite(str(p), synthetic_photo(rng), params)
            sources.append(p)
        for n in (args.n, 4 * args.n):
            folder = write_set(args.work, n, ext, sources)
            decode_s, decode_rss, out = timed_child([sys.executable, "-c", DECODE_ONLY, str(folder),
                                                     str(args.workers)])
            decode_s = float(out.strip().splitlines()[-1])
            cache = args.work / f"{ext}_{n}.h5"
            cache.unlink(missing_ok=True)
            wall, rss, _ = timed_child([sys.executable, "-m", "mip360cli", "preprocess", str(folder),
                                        "--out", str(cache), "--workers", str(args.workers), "--force",
                                        f"cache.memory_mb={args.memory_mb}",
                                        f"cache.compression={args.compression}"])
            rays = (n - len(range(0, n, 8))) * W * H
            rows.append(dict(format=ext, images=n, rays=rays, preprocess_s=round(wall, 2),
                             images_per_s=round(n / wall, 2), decode_only_images_per_s=round(n / decode_s, 2),
                             ratio_to_decode=round(decode_s / wall, 3),
                             bytes_per_ray=round(cache.stat().st_size / rays, 3),
                             peak_rss_mib=round(rss / 2**20, 1), decode_peak_rss_mib=round(decode_rss / 2**20, 1)))
            print(json.dumps(rows[-1]), flush=True)

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"workers={args.workers}, cache.memory_mb={args.memory_mb}, cache.compression={args.compression}")
    header = ("format", "images", "rays", "preprocess_s", "images_per_s", "decode_only_images_per_s",
              "ratio_to_decode", "bytes_per_ray", "peak_rss_mib")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in header) + " |")
    for ext in args.formats.split(","):
        small, large = [r for r in rows if r["format"] == ext]
        print(f"{ext}: peak RSS 4N/N = {large['peak_rss_mib'] / small['peak_rss_mib']:.3f} "
              f"(target <= 1.2); bytes/ray {large['bytes_per_ray']} (target <= 5.5, earlier port ~22)")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
