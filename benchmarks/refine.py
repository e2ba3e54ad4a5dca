"""What camera refinement buys on the example scene: training poses perturbed by a fixed angle and distance,
trained with and without ``train.refine_cameras``, against the run on the true poses.

Prints, for each run: the held-out PSNR (held-out cameras keep their true poses) and the training cameras'
pose errors against the truth (after the best similarity of the camera centres: the scene's frame is free).

    python benchmarks/refine.py --steps 1500 --size 64x48
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from mip360cli.config import CacheConfig, DataConfig, load_config
from mip360cli.data.cache import build_cache
from mip360cli.data.cameras import pose_errors
from mip360cli.data.example import make_example
from mip360cli.data.formats import colmap
from mip360cli.eval.evaluate import evaluate
from mip360cli.runs.load import load_run
from mip360cli.train.loop import train


def perturbed(c2w: np.ndarray, degrees: float, fraction: float, radius: float, seed: int) -> np.ndarray:
    """Each pose turned by ``degrees`` about a random axis and moved by ``fraction * radius`` in a random
    direction."""
    g = np.random.default_rng(seed)
    out = c2w.copy()
    for k in range(len(c2w)):
        axis = g.normal(size=3)
        axis /= np.linalg.norm(axis)
        a = math.radians(degrees)
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        R = np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K
        step = g.normal(size=3)
        out[k, :, :3] = R @ c2w[k, :, :3]
        out[k, :, 3] = c2w[k, :, 3] + fraction * radius * step / np.linalg.norm(step)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--size", default="64x48")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--degrees", type=float, default=0.5)
    ap.add_argument("--fraction", type=float, default=0.01, help="of the cameras' mean distance from their centre")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    root = Path(tempfile.mkdtemp(prefix="mip360-refine-"))
    true = make_example(root / "clean", "colmap", args.images, w, h)
    radius = float(np.linalg.norm(true.c2w[:, :, 3] - true.c2w[:, :, 3].mean(0), axis=1).mean())
    held = np.arange(args.images) % 8 == 0
    noisy_c2w = true.c2w.copy()
    noisy_c2w[~held] = perturbed(true.c2w[~held], args.degrees, args.fraction, radius, args.seed)
    make_example(root / "noisy", "colmap", args.images, w, h)
    colmap.write(root / "noisy", true.replace(c2w=noisy_c2w))
    print(f"example scene: {args.images} photos of {w}x{h}; training poses turned by {args.degrees} degrees and "
          f"moved by {args.fraction:.1%} of the radius; {args.steps} tiny steps")
    runs = {"true poses": ("clean", []), "perturbed": ("noisy", []),
            "perturbed + refine_cameras": ("noisy", ["train.refine_cameras=true"])}
    for name, (scene, extra) in runs.items():
        t0 = time.perf_counter()
        cache = build_cache(root / scene, DataConfig(), CacheConfig(bucket_rays=4096), out=root / f"{scene}.h5").path
        run = root / name.replace(" ", "_")
        train(cache, run, load_config("tiny", [f"train.max_steps={args.steps}", "train.val_every=0", *extra]))
        loaded = load_run(run, device="cpu")
        psnr = evaluate(loaded, "test", None)["mean"]["psnr"]
        # training cameras in the run's normalized world against the truth (any similarity apart)
        rot, pos = pose_errors(loaded.cameras.select(loaded.train), true.select(np.flatnonzero(~held)))
        print(f"{name:28} held-out PSNR {psnr:6.2f} dB   training poses: rotation {rot.mean():.3f} deg, "
              f"position {pos.mean():.2%} of the radius (mean)   {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
