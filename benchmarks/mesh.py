"""Mesh export: time, peak memory and blocks at 512 and 1024 voxels, against the dense volume's size.

    python benchmarks/mesh.py [--run RUN] [--ratio 4] [--picture docs/mesh.png]

Without ``--run`` it trains the tiny preset on the example scene (600 steps, about a minute on 2 cores).
Each export runs in its own process, so its peak resident memory (ru_maxrss) is its own; the baseline is a
process that loads the run and renders the depth maps only (what the point export costs too).
``--picture`` draws the 512-voxel mesh (a small z-buffer rasterizer, flat shading with vertex colours).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from mip360cli.runs.load import load_run
from mip360cli.export.mesh import BlockVolume, MeshOptions, export_mesh
from mip360cli.export.points import Scratch, render_depth_maps
run, out, res, ratio = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
loaded = load_run(run, device="cpu")
t = time.perf_counter()
if res == 0:
    views = loaded.views("train", ratio)
    scratch = Scratch(out.parent / ".baseline")
    render_depth_maps(loaded, views, scratch)
    scratch.remove()
    extra = {}
else:
    s = export_mesh(loaded, out, MeshOptions(resolution=res, ratio=ratio))
    extra = {"faces": s.faces, "blocks": s.blocks, "volume_mib": s.blocks * BlockVolume.bytes_per_block() / 2**20,
             "dense_mib": None, "culled": s.culled_faces, "dropped": s.dropped_pixels}
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
"""


def picture(mesh_path: Path, out: Path, width: int = 960, height: int = 540) -> None:
    """Draw the mesh from above and aside: faces sorted far to near, filled with their vertices' mean colour
    times a Lambert term (cv2.fillConvexPoly)."""
    import cv2
    import trimesh

    mesh = trimesh.load(mesh_path, process=False)
    v = np.asarray(mesh.vertices)
    center = np.median(v, 0)
    extent = np.percentile(np.linalg.norm(v - center, axis=1), 90)
    eye = center + extent * np.array([1.6, -1.9, 1.3])
    forward = (center - eye) / np.linalg.norm(center - eye)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    cam = (v - eye) @ np.stack([right, down, forward], 1)
    f = 0.9 * width
    uv = cam[:, :2] / np.maximum(cam[:, 2:], 1e-6) * f + [width / 2, height / 2]
    faces = np.asarray(mesh.faces)
    depth = cam[faces, 2].mean(1)
    normals = np.asarray(mesh.face_normals)
    light = np.clip(normals @ -forward, 0, 1) * 0.7 + 0.3
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3][faces].mean(1) * light[:, None]
    img = np.full((height, width, 3), 255, np.uint8)
    for k in np.argsort(-depth):
        if depth[k] <= 0:
            continue
        cv2.fillConvexPoly(img, np.round(uv[faces[k]] * 16).astype(np.int32), colors[k][::-1].tolist(),
                           lineType=cv2.LINE_AA, shift=4)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--ratio", type=float, default=4.0, help="render the views at this scale (more surface)")
    ap.add_argument("--picture", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run
        if run is None:
            from mip360cli.config import CacheConfig, DataConfig, load_config
            from mip360cli.data.cache import build_cache
            from mip360cli.data.example import make_example
            from mip360cli.train.loop import train

            make_example(tmp / "scene", "colmap", 24, 64, 48)
            cache = build_cache(tmp / "scene", DataConfig(), CacheConfig(bucket_rays=4096), out=tmp / "c.h5").path
            run = tmp / "run"
            train(cache, run, load_config("tiny", ["train.max_steps=600", "train.val_every=0"]))
        print(f"run {run}, views rendered at ratio {args.ratio}")
        results = {}
        for res in (0, 512, 1024):
            out = tmp / f"mesh{res}.ply"
            r = subprocess.run([sys.executable, "-c", CHILD, str(run), str(out), str(res), str(args.ratio)],
                               capture_output=True, text=True)
            if r.returncode:
                sys.exit(r.stderr[-2000:])
            results[res] = json.loads(r.stdout.strip().splitlines()[-1])
            label = "depth maps only (baseline)" if res == 0 else f"{res} voxels"
            x = results[res]
            line = f"{label:28s} {x['seconds']:7.1f} s  peak {x['peak_mib']:8.1f} MiB"
            if res:
                line += (f"  (+{x['peak_mib'] - results[0]['peak_mib']:.1f} over the baseline)  {x['faces']:,} faces,"
                         f" {x['blocks']:,} blocks = {x['volume_mib']:.1f} MiB of volume; a dense {res}^3 volume of "
                         f"the same fields: {res ** 3 * 14 / 2**20:,.0f} MiB")
            print(line, flush=True)
            if res == 512 and args.picture:
                picture(out, args.picture)
                print(f"picture of the 512-voxel mesh -> {args.picture}")


if __name__ == "__main__":
    main()
