"""Pose-estimation benchmark: `mip360 poses` on example renders with known poses, on the CPU.

For each set size N, renders N textured example views (a ring of cameras) at
the given size, runs the poses pipeline (pycolmap) on the photos as a user
would, and prints the time of each stage, the registered fraction, the mean
reprojection error and the pose error against the true cameras after a
similarity alignment.

    python benchmarks/poses.py --n 50,200 --size 640x480
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mip360cli.data.example import make_example
from mip360cli.data.formats import read_cameras
from mip360cli.data.poses import PosesOptions, compute_poses


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: (s, R, t) minimising |s R src + t - dst|^2 over points (n, 3)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float((S * np.diag(D)).sum() / ((a ** 2).sum() / len(src)))
    return s, R, mu_d - s * R @ mu_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="50,200", help="set sizes, comma-separated")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--camera-model", default="SIMPLE_RADIAL")
    ap.add_argument("--matcher", default="auto")
    args = ap.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.size}, camera model {args.camera_model}, matcher {args.matcher}")
    for n in (int(x) for x in args.n.split(",")):
        root = Path(tempfile.mkdtemp(prefix="mip360-poses-"))
        try:
            t = time.perf_counter()
            make_example(root / "scene", "colmap", n, width, height, texture=True)
            render_s = time.perf_counter() - t
            opts = PosesOptions(camera_model=args.camera_model, matcher=args.matcher)
            r = compute_poses(root / "scene" / "images", root / "data", opts)
            _, est, _ = read_cameras(root / "data")
            _, true, _ = read_cameras(root / "scene")
            true = true.select([true.names.index(name) for name in est.names])
            s, R, t_ = similarity(est.c2w[:, :, 3], true.c2w[:, :, 3])
            radius = np.linalg.norm(true.c2w[:, :, 3] - true.c2w[:, :, 3].mean(0), axis=1).mean()
            pos = np.linalg.norm(s * est.c2w[:, :, 3] @ R.T + t_ - true.c2w[:, :, 3], axis=1) / radius
            cos = [(np.trace((R @ e[:, :3]).T @ g[:, :3]) - 1) / 2 for e, g in zip(est.c2w, true.c2w)]
            rot = np.degrees(np.arccos(np.clip(cos, -1, 1)))
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items())
            print(f"N={n}: {sum(r.seconds.values()):.1f} s ({stages}); registered {r.registered}/{r.images} "
                  f"({r.registered / r.images:.0%}); reprojection {r.reprojection_error:.3f} px; "
                  f"{r.matcher} matching; pose error {rot.mean():.3f} deg mean / {rot.max():.3f} max, "
                  f"position {100 * pos.mean():.2f}% / {100 * pos.max():.2f}% of the rig radius; "
                  f"(rendering the views took {render_s:.0f} s)")
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
