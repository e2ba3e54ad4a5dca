"""Render benchmark: frames/s and rays/s, and peak memory at two image sizes (should be equal).

Each image size runs in its own process so its peak memory is its own
(GPU: torch.cuda.max_memory_allocated; CPU: the process's peak RSS). The model
is freshly initialized: speed does not depend on its weights.

    python benchmarks/render.py --preset tiny --sizes 256,512
    python benchmarks/render.py --preset paper --device cuda --sizes 512,1024
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from mip360cli.config import load_config
from mip360cli.data.cameras import normalize_poses
from mip360cli.data.example import ring_cameras
from mip360cli.model.model import chunk_rays
from mip360cli.render.paths import ellipse_path
from mip360cli.core.device import resolve_device
from mip360cli.runs.load import build_model
from mip360cli.runs.views import render_image


def child(preset: str, size: int, frames: int, device_name: str, chunk: str, compiled: str) -> dict:
    device = resolve_device(device_name)  # as `mip360 render` does (on the CPU: malloc keeps freed memory)
    cfg = load_config("tiny" if preset == "tiny" else "default",
                      [f"train.compile={ {'on': 'true', 'off': 'false'}.get(compiled, compiled)}"])
    torch.manual_seed(0)
    model = build_model(cfg, device).eval()  # as `mip360 render` builds a run's model (precision, compile)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    chunk = chunk_rays(chunk, model, device)  # "auto" or a number
    c2w, _ = normalize_poses(ring_cameras(16, size, size).c2w)
    poses = ellipse_path(c2w, frames + 1)
    K = np.array([[0.8 * size, 0, size / 2], [0, 0.8 * size, size / 2], [0, 0, 1]])
    t0 = time.perf_counter()
    render_image(model, K, poses[0], None, size, size, chunk, device)  # warm-up (and compilation)
    setup = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for p in poses[1:]:
        render_image(model, K, p, None, size, size, chunk, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"preset": preset, "size": size, "frames": frames, "frames_per_s": frames / dt,
            "rays_per_s": frames * size * size / dt, "peak_mib": peak / 2**20,
            "memory": "GPU allocated" if device.type == "cuda" else "process RSS", "compiled": model.compiled,
            "first_frame_s": setup, "chunk": chunk}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--chunk", default="auto", help="rays at once, or auto (render.chunk_rays) [auto]")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="compile the model (auto: on CUDA, as train.compile=auto) [auto]")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.preset, args.child, args.frames, args.device, args.chunk, args.compile)))
        return
    rows = []
    for size in map(int, args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--device", args.device,
                              "--frames", str(args.frames), "--chunk", str(args.chunk), "--compile", args.compile,
                              "--child", str(size)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['preset']:5s} {r['size']}x{r['size']}: {r['frames_per_s']:.3f} frames/s, "
              f"{r['rays_per_s']:,.0f} rays/s, peak {r['peak_mib']:.0f} MiB ({r['memory']}); "
              f"{'compiled' if r['compiled'] else 'eager'}, first frame {r['first_frame_s']:.1f} s", flush=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {name}, chunk {rows[-1]['chunk']} rays ({args.chunk}); peak memory ratio largest/smallest size: "
          f"{rows[-1]['peak_mib'] / rows[0]['peak_mib']:.3f}")


if __name__ == "__main__":
    main()
