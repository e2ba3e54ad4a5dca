"""Training-step benchmark: rays/s of a full step and the MLPs' FLOP rate against a plain matmul.

A full step = ray sampling through every level, both MLPs, compositing, the
three losses, backward and Adam. In the same run it times a plain matmul of
the NeRF MLP's shape (rays x samples, width) @ (width, width) in the MLPs'
precision, and prints the MLP FLOP rate achieved inside the step as a
fraction of it.

    python benchmarks/train_step.py --preset tiny --device cpu
    python benchmarks/train_step.py --preset paper --device cpu --rays 256
    python benchmarks/train_step.py --preset paper --device cuda --rays 8192
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mip360cli.config import load_config
from mip360cli.model.model import Mip360
from mip360cli.model.shapes import unaligned_gemms
from mip360cli.train.loop import compute_losses


def mlp_flops_per_ray(model: Mip360) -> float:
    """Matmul FLOPs of forward + backward (3x forward) per ray, both MLPs, every level (padding included:
    the GPU multiplies it too). The view branch's direction part runs once per ray, the rest per sample."""
    def linear_macs(module: torch.nn.Module, skip: tuple = ()) -> int:
        return sum(m.in_features * m.out_features for m in module.modules()
                   if isinstance(m, torch.nn.Linear) and m not in skip)

    per_ray = tuple(m for m in (getattr(model.nerf, "view_d", None),) if m is not None)  # absent in older layouts
    prop = linear_macs(model.proposal) * sum(model.samples[:-1])
    nerf = linear_macs(model.nerf, per_ray) * model.samples[-1] + sum(linear_macs(m) for m in per_ray)
    return 2 * 3 * (prop + nerf)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rays", type=int, default=None, help="rays per step [cpu: tiny 512, paper 256; cuda 8192]")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    device = torch.device(args.device)
    cfg = load_config("tiny" if args.preset == "tiny" else "default")
    rays = args.rays or (8192 if device.type == "cuda" else (512 if args.preset == "tiny" else 256))
    steps = args.steps or (20 if device.type == "cuda" or args.preset == "tiny" else 3)
    torch.manual_seed(0)
    model = Mip360.from_config(cfg.model, cfg.data).to(device)
    bf16 = device.type == "cuda" and args.precision in ("auto", "bf16")
    if bf16:
        model.mlp_dtype = torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.compile:
        model.proposal = torch.compile(model.proposal)
        model.nerf = torch.compile(model.nerf)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-6,
                           **({"fused": True} if device.type == "cuda" else {}))
    g = torch.Generator(device="cpu").manual_seed(0)
    o = (torch.rand(rays, 3, generator=g) * 2 - 1).to(device) * 0.5
    d = torch.randn(rays, 3, generator=g).to(device)
    vd = d / d.norm(dim=-1, keepdim=True)
    gt = torch.rand(rays, 3, generator=g).to(device)
    jitter = torch.rand(rays, model.n_levels(), generator=g).to(device)

    def step():
        levels = model(o, d, vd, train_frac=0.5, jitter=jitter)
        loss = compute_losses(levels, gt, cfg)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        opt.step()

    gemms, odd = unaligned_gemms(step)  # one step, counted by shape (the target is 0 odd ones)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_step = time_it(step, device, args.warmup, steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    width = cfg.model.nerf.width
    m = rays * cfg.model.nerf.samples
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(m, width, device=device, dtype=dtype)
    w = torch.randn(width, width, device=device, dtype=dtype)
    t_mm = time_it(lambda: a @ w, device, 2, max(3, steps))
    mm_rate = 2 * m * width * width / t_mm

    flops = mlp_flops_per_ray(model) * rays
    achieved = flops / t_step
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device            {name} ({device.type}, {torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"preset            {args.preset}: prop {cfg.model.prop.depth}x{cfg.model.prop.width} on "
          f"{cfg.model.prop.samples}, nerf {cfg.model.nerf.depth}x{cfg.model.nerf.width} on {cfg.model.nerf.samples}; "
          f"{'bf16' if bf16 else 'fp32'} MLPs{', compiled' if args.compile else ''}")
    print(f"rays per step     {rays}")
    print(f"step time         {t_step * 1e3:.1f} ms")
    print(f"rays/s            {rays / t_step:,.0f}")
    print(f"MLP GFLOP/ray     {mlp_flops_per_ray(model) / 1e9:.3f} (forward + backward)")
    print(f"MLP FLOP/s        {achieved / 1e12:.3f} TFLOP/s in the step")
    print(f"matmul FLOP/s     {mm_rate / 1e12:.3f} TFLOP/s ({m}x{width} @ {width}x{width}, {dtype})")
    print(f"fraction          {achieved / mm_rate:.1%} of the matmul rate")
    print(f"GEMMs per step    {gemms}, {len(odd)} with a dimension not a multiple of 16"
          + (f" (e.g. {sorted(set(odd))[:4]})" if odd else ""))
    if peak is not None:
        print(f"peak GPU memory   {peak:.2f} GiB for {rays} rays")


if __name__ == "__main__":
    main()
