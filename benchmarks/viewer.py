"""What the live viewer costs training: rays/s of `train` without and with `--viewer`, same run, same data.

The worst case is measured: a client whose camera moves all the time, so the viewer always has a frame
to render (a real browser asks only while the user moves or a view is refined). Runs alternate
(without, with, without, with) and each figure is the mean of the rays/s that metrics.jsonl records
after the first log window (compilation and start-up excluded). Target: at most 10% fewer rays/s.

    python benchmarks/viewer.py                       # tiny preset, CPU
    python benchmarks/viewer.py --device cuda --preset paper --steps 300
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from mip360cli.config import CacheConfig, DataConfig, load_config
from mip360cli.data.cache import build_cache
from mip360cli.data.example import make_example
from mip360cli.train.loop import train
from mip360cli.view.core import ViewCamera
from mip360cli.view.server import ViewerHook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mip360-viewer-bench-"))
    make_example(root / "scene", "colmap", 24, 96, 72)
    cache = build_cache(root / "scene", DataConfig(), CacheConfig(bucket_rays=4096), out=root / "cache.h5").path
    log_every = max(10, args.steps // 10)
    cfg = lambda: load_config("tiny" if args.preset == "tiny" else "default", [  # noqa: E731
        f"train.max_steps={args.steps}", "train.val_every=0", f"train.log_every={log_every}",
        "train.checkpoint_every=100000", "train.tensorboard=false", f"train.device={args.device}"])
    lives = []

    class MovingClient(ViewerHook):
        """The viewer with a client whose camera moves again as soon as a frame is done."""

        def start(self, ctx) -> None:
            super().start(ctx)
            core = self.live.viewer.core
            base = ctx.cameras.c2w[0]
            state = {"angle": 0.0}
            real_pending = core.pending

            def pending() -> bool:
                if not core.jobs:
                    state["angle"] += 0.05
                    c, s = np.cos(state["angle"]), np.sin(state["angle"])
                    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
                    core.request("moving client", ViewCamera(np.concatenate([rot @ base[:, :3], rot @ base[:, 3:]],
                                                                            1), 0.8, 4 / 3), max_side=512)
                return real_pending()

            core.pending = pending
            lives.append(self.live)

    results: dict[str, list[float]] = {"without": [], "with": []}
    shares = []
    for r in range(args.repeats):
        for mode in ("without", "with"):
            run = root / f"run_{mode}_{r}"
            hooks = [MovingClient("127.0.0.1", free_port())] if mode == "with" else []
            train(cache, run, cfg(), hooks=hooks)
            rates = [m["rays_per_s"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                     if "rays_per_s" in m][1:]
            results[mode].append(statistics.mean(rates))
            if mode == "with":
                live = lives[-1]
                shares.append((live.render_s, live.viewer.core.frames_rendered))
    without, with_ = statistics.mean(results["without"]), statistics.mean(results["with"])
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {name}, {torch.get_num_threads()} threads, preset {args.preset}, {args.steps} steps per run, "
          f"{args.repeats} runs each")
    print(f"train rays/s without the viewer  {without:,.0f}  ({', '.join(f'{x:,.0f}' for x in results['without'])})")
    print(f"train rays/s with the viewer     {with_:,.0f}  ({', '.join(f'{x:,.0f}' for x in results['with'])})")
    print(f"cost                             {1 - with_ / without:.1%} of the rays/s (target <= 10%)")
    print("viewer rendering per run         " + ", ".join(f"{s:.1f} s, {n} frames" for s, n in shares))


if __name__ == "__main__":
    main()
