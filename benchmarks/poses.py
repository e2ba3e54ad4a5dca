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

from mip360cli.data.cameras import pose_errors
from mip360cli.data.example import make_example
from mip360cli.data.formats import read_cameras
from mip360cli.data.poses import PosesOptions, compute_poses


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
            rot, pos = pose_errors(est, true)
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
