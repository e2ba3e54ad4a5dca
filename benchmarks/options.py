"""What each model option costs in training speed: rays/s of the training step with and without it, measured
in alternating rounds of the same run (so that a shared machine moves all alike), and the ratio to the plain
model.

The step is the loop's own: a :class:`~mip360cli.train.step.RayStep` (rays from cameras and pixels, through the
pose corrections), the model, the losses, backward, clipping and fused Adam, on random pixels of 24 ring
cameras of 96x72.

    python benchmarks/options.py --preset tiny --device cpu
    python benchmarks/options.py --preset paper --device cuda --rays 16384
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import platform
import statistics
import time

import torch

from mip360cli.config import load_config
from mip360cli.data.cameras import cameras_to_tensors
from mip360cli.data.example import ring_cameras
from mip360cli.runs.load import build_model
from mip360cli.train.step import RayStep, compute_losses, make_optimizer, parameter_groups, train_step

OPTIONS = {
    "plain": [],
    "appearance (dim 4)": ["model.appearance.dim=4"],
    "refine_cameras": ["train.refine_cameras=true"],
    "integrated": ["model.encoding.integrated=true"],
    "all three": ["model.appearance.dim=4", "train.refine_cameras=true", "model.encoding.integrated=true"],
}


def make_step(preset: str, overrides: list[str], device: torch.device, rays: int):
    """A closure running one training step of the model ``overrides`` make, on fixed random pixels."""
    cfg = load_config(preset, overrides + [f"train.device={device.type}"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False))
    cams = ring_cameras(24, 96, 72)
    train = torch.arange(1, 24, device=device)  # one camera held out, as in a run
    torch.manual_seed(0)
    model = build_model(cfg, device, len(train))
    step_module = RayStep(model, cameras_to_tensors(cams.replace(c2w=cams.c2w / [1, 1, 1, 3]), device), train)
    opt = make_optimizer(model, cfg)
    params, unclipped = parameter_groups(model)
    loss_fn = functools.partial(compute_losses, cfg=cfg)
    g = torch.Generator(device="cpu").manual_seed(0)
    cam = train[torch.randint(0, len(train), (rays,), generator=g).to(device)]
    u = torch.randint(0, 96, (rays,), generator=g).to(device)
    v = torch.randint(0, 72, (rays,), generator=g).to(device)
    gt = torch.rand(rays, 3, generator=g).to(device)
    jitter = torch.rand(rays, model.n_levels(), generator=g).to(device)
    frac = torch.tensor(0.5, device=device)

    def step():
        train_step(step_module, opt, loss_fn, params, cfg.train.grad_max_norm, (cam, u, v), gt, frac, jitter,
                   unclipped=unclipped)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rays", type=int, default=None, help="rays per step [tiny 1024, paper 256 on cpu, 16384]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="steps per round [tiny 10, paper 2 on cpu, 10]")
    args = ap.parse_args()
    device = torch.device(args.device)
    preset = "tiny" if args.preset == "tiny" else "default"
    cpu_paper = args.preset == "paper" and device.type == "cpu"
    rays = args.rays or (256 if cpu_paper else 1024 if args.preset == "tiny" else 16384)
    steps = args.steps or (2 if cpu_paper else 10)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device   {name} ({device.type}, {torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"preset   {args.preset}, {rays} rays a step, {args.rounds} rounds of {steps} steps (medians)")
    closures = {k: make_step(preset, v, device, rays) for k, v in OPTIONS.items()}
    times: dict[str, list[float]] = {k: [] for k in closures}
    for fn in closures.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for k, fn in closures.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[k].append((time.perf_counter() - t0) / steps)
    base = statistics.median(times["plain"])
    print(f"{'option':22} {'step ms':>9} {'rays/s':>10} {'vs plain':>9}")
    for k, ts in times.items():
        t = statistics.median(ts)
        print(f"{k:22} {t * 1e3:>9.1f} {rays / t:>10,.0f} {base / t:>9.2f}")


if __name__ == "__main__":
    main()
