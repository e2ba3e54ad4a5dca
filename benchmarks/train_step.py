"""Training-step benchmark: eager and compiled side by side, against a plain matmul measured in the same run.

A step is the training loop's own (``mip360cli.train.loop.train_step``): ray
sampling through every level, both MLPs, compositing, the three losses,
backward, clipping and fused Adam, with nothing read back to the host. For each
ray count and mode it prints the step time, rays/s, the MLPs' FLOP rate inside
the step and that rate as a fraction of a plain matmul of the NeRF MLP's shape
(rays x samples, width) @ (width, width) in the MLPs' precision: torch.mm and, on
the CPU, oneDNN's matmul (which the MLPs use there; torch.mm's MKL reaches half
of it on some CPUs), the faster of the two, with the fraction of torch.mm in a
last column. Steps and
matmuls are timed in alternating rounds and the medians are kept, so that a
shared or throttling machine moves both alike.

Also printed: peak GPU memory per mode (CUDA), the bytes an eager step keeps
for backward (per 16384 rays, with bf16 MLPs as on CUDA; measured by shape, so
on the CPU too) and the number of GEMMs per step with a dimension that is not a
multiple of 16 (the target is 0).

    python benchmarks/train_step.py --preset tiny --device cpu
    python benchmarks/train_step.py --preset paper --device cpu --rays 256
    python benchmarks/train_step.py --preset paper --device cuda              # 8192 and 16384 rays
    python benchmarks/train_step.py --preset paper --device cuda --modes compiled --rays 16384
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
from mip360cli.core.cpualloc import keep_freed_memory
from mip360cli.model.linear import onednn_linear, uses_onednn
from mip360cli.core.device import compile_enabled
from mip360cli.model.model import Mip360
from mip360cli.model.shapes import unaligned_gemms
from mip360cli.runs.load import build_model
from mip360cli.train.step import compute_losses, make_optimizer, train_step


def mlp_flops_per_ray(model: Mip360) -> float:
    """Matmul FLOPs of forward + backward (3x forward) per ray, both MLPs, every level (padding included:
    the GPU multiplies it too). The view branch's direction part runs once per ray, the rest per sample.
    The proposal MLP's recomputation in backward is not counted: it is overhead, as on the GPU."""
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


def timed(fn, device, iters: int) -> float:
    """Seconds per call of ``fn`` over ``iters`` calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


class Inputs:
    """Random rays in the unit ball, as the loop feeds a step."""

    def __init__(self, rays: int, levels: int, device: torch.device):
        g = torch.Generator(device="cpu").manual_seed(0)
        self.o = (torch.rand(rays, 3, generator=g) * 2 - 1).to(device) * 0.5
        self.d = torch.randn(rays, 3, generator=g).to(device)
        self.vd = self.d / self.d.norm(dim=-1, keepdim=True)
        self.gt = torch.rand(rays, 3, generator=g).to(device)
        self.jitter = torch.rand(rays, levels, generator=g).to(device)
        self.frac = torch.tensor(0.5, device=device)


def build(cfg, device: torch.device, bf16: bool, compiled: bool):
    """Model, optimizer and a step closure set up as ``mip360 train`` sets them up."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compiled,
                                                             precision="bf16" if bf16 else "fp32"))
    model = build_model(cfg, device)  # the precision and compile policy of `mip360 train`
    loss_fn = functools.partial(compute_losses, cfg=cfg)
    if model.compiled:
        loss_fn = torch.compile(loss_fn, dynamic=False)
    opt = make_optimizer(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, opt, loss_fn, params


def saved_bytes(cfg, rays: int, device: torch.device) -> float:
    """Bytes one eager forward keeps for backward with bf16 MLPs (each storage once), for ``rays`` rays."""
    torch.manual_seed(0)
    model = Mip360.from_config(cfg.model, cfg.data).to(device)
    model.recompute_proposal = cfg.train.recompute_proposal
    model.mlp_dtype = torch.bfloat16
    x = Inputs(rays, model.n_levels(), device)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        levels = model(x.o, x.d, x.vd, train_frac=x.frac, jitter=x.jitter)
        compute_losses(levels, x.gt, cfg)
    return float(sum(seen.values()))


def loop_rays_per_s(args, rays: int) -> float:
    """rays/s that ``mip360 train`` logs on the example scene (after its first log window)."""
    import json
    import tempfile
    from pathlib import Path

    from mip360cli.config import CacheConfig, DataConfig
    from mip360cli.data.cache import build_cache
    from mip360cli.data.example import make_example
    from mip360cli.train.loop import train

    root = Path(tempfile.mkdtemp(prefix="mip360-loop-bench-"))
    make_example(root / "scene", "colmap", 24, 96, 72)
    cache = build_cache(root / "scene", DataConfig(), CacheConfig(bucket_rays=max(4096, rays)),
                        out=root / "cache.h5").path
    every = max(5, args.loop // 10)
    cfg = load_config("tiny" if args.preset == "tiny" else "default", [
        f"train.max_steps={args.loop}", f"train.batch_rays={rays}", f"train.log_every={every}", "train.val_every=0",
        "train.checkpoint_every=1000000", "train.tensorboard=false", f"train.device={args.device}",
        f"train.precision={args.precision}"])
    train(cache, root / "run", cfg)
    rates = [m["rays_per_s"] for m in map(json.loads, (root / "run" / "metrics.jsonl").read_text().splitlines())
             if "rays_per_s" in m]
    return statistics.mean(rates[1:-1] or rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rays", default=None,
                    help="comma-separated rays per step [cuda: 8192,16384; cpu: tiny 512, paper 256]")
    ap.add_argument("--modes", default="eager,compiled", help="eager, compiled or both [both]")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of steps and matmuls [5]")
    ap.add_argument("--steps", type=int, default=None, help="steps per round [cuda/tiny 10, paper on cpu 1]")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--profile", action="store_true",
                    help="print a torch.profiler top-30 (by device time) of one step of the last mode and ray count")
    ap.add_argument("--loop", type=int, default=0, metavar="STEPS",
                    help="also run `mip360 train` for STEPS steps (example scene, same preset, rays and device) "
                         "and print its rays/s against the step's")
    ap.add_argument("--recompute-proposal", choices=["config", "on", "off"], default="config")
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's malloc as it is (on the CPU, mip360 makes it keep freed memory)")
    args = ap.parse_args()

    device = torch.device(args.device)
    kept = device.type == "cpu" and not args.system_malloc and keep_freed_memory()  # as resolve_device does
    cfg = load_config("tiny" if args.preset == "tiny" else "default")
    if args.recompute_proposal != "config":
        cfg.train.recompute_proposal = args.recompute_proposal == "on"
    rays_list = [int(r) for r in args.rays.split(",")] if args.rays else (
        [8192, 16384] if device.type == "cuda" else [512 if args.preset == "tiny" else 256])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"eager", "compiled"}:
        ap.error("--modes takes eager and/or compiled")
    steps = args.steps or (10 if device.type == "cuda" or args.preset == "tiny" else 1)
    bf16 = device.type == "cuda" and args.precision in ("auto", "bf16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if bf16 else torch.float32
    width = cfg.model.nerf.width
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device            {name} ({device.type}, {torch.get_num_threads()} threads), torch {torch.__version__}"
          + ("; malloc keeps freed memory" if kept else ""))
    print(f"preset            {args.preset}: prop {cfg.model.prop.depth}x{cfg.model.prop.width} on "
          f"{cfg.model.prop.samples}, nerf {cfg.model.nerf.depth}x{cfg.model.nerf.width} on "
          f"{cfg.model.nerf.samples}; {'bf16' if bf16 else 'fp32'} MLPs; proposal recomputed in backward: "
          f"{cfg.train.recompute_proposal}")

    rows = []
    for rays in rays_list:
        x = Inputs(rays, len(cfg.model.prop.samples) + 1, device)
        built = {}
        for mode in modes:
            t0 = time.perf_counter()
            model, opt, loss_fn, params = build(cfg, device, bf16, mode == "compiled")
            step = functools.partial(train_step, model, opt, loss_fn, params, cfg.train.grad_max_norm,
                                     (x.o, x.d, x.vd), x.gt, x.frac, x.jitter)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(2):  # compiles (compiled mode) and warms up
                step()
            sync(device)
            built[mode] = (model, step, time.perf_counter() - t0)
        m = rays * cfg.model.nerf.samples
        a = torch.randn(m, width, device=device, dtype=dtype)
        w = torch.randn(width, width, device=device, dtype=dtype)
        refs = {"torch.mm": lambda: a @ w}
        if uses_onednn(a, w):  # the CPU: oneDNN's matmul, which the MLPs use there, is a reference too
            refs["oneDNN"] = lambda: onednn_linear(a, w, None)
        for ref in refs.values():
            timed(ref, device, 3)
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        ref_times: dict[str, list[float]] = {name: [] for name in refs}
        for _ in range(args.rounds):
            for mode in modes:
                times[mode].append(timed(built[mode][1], device, steps))
            for name, ref in refs.items():
                ref_times[name].append(timed(ref, device, max(3, steps)))
        ref_rates = {name: 2 * m * width * width / statistics.median(t) for name, t in ref_times.items()}
        mm_rate = max(ref_rates.values())  # the fraction is of the fastest matmul measured
        if args.profile and rays == rays_list[-1]:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                built[modes[-1]][1]()
                sync(device)
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(f"profile of one {modes[-1]} step, {rays} rays:")
            print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))
        for mode in modes:
            model, step, setup_s = built[mode]
            t_step = statistics.median(times[mode])
            achieved = mlp_flops_per_ray(model) * rays / t_step
            peak = None
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**30
            rows.append((mode, rays, t_step, achieved, mm_rate, peak, setup_s, achieved / ref_rates["torch.mm"]))
        built = a = w = None  # free them before the next size
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"matmul reference  ({'rays'} x {cfg.model.nerf.samples} samples, {width}) @ ({width}, {width}), {dtype}; "
          + ", ".join(f"{name} {rate / 1e12:.3f} TFLOP/s" for name, rate in ref_rates.items())
          + (" (last size); the fraction is of the faster" if len(ref_rates) > 1 else ""))
    extra = len(ref_rates) > 1
    print(f"{'mode':9} {'rays':>6} {'step ms':>9} {'rays/s':>10} {'MLP TFLOP/s':>12} {'matmul TFLOP/s':>15} "
          f"{'fraction':>9} {'peak GiB':>9} {'setup s':>8}" + (f" {'of torch.mm':>12}" if extra else ""))
    for mode, rays, t_step, achieved, mm_rate, peak, setup_s, of_mm in rows:
        print(f"{mode:9} {rays:>6} {t_step * 1e3:>9.1f} {rays / t_step:>10,.0f} {achieved / 1e12:>12.3f} "
              f"{mm_rate / 1e12:>15.3f} {achieved / mm_rate:>9.1%} {'-' if peak is None else f'{peak:.2f}':>9} "
              f"{setup_s:>8.1f}" + (f" {of_mm:>12.1%}" if extra else ""))

    # Kept for backward by an eager step, by shape: linear in rays plus a fixed part (bf16 weight copies).
    r = rays_list[0]
    s1, s2 = saved_bytes(cfg, r, device), saved_bytes(cfg, 2 * r, device)
    per_ray = (s2 - s1) / r
    fixed = s1 - per_ray * r
    print(f"kept for backward {(fixed + per_ray * 16384) / 2**30:.2f} GiB per 16384-ray step "
          f"(eager, bf16 MLPs as on CUDA; {per_ray / 2**10:.1f} KiB per ray + {fixed / 2**20:.0f} MiB)")

    if args.loop:
        loop_rate = loop_rays_per_s(args, rays_list[-1])
        default = "compiled" if compile_enabled(cfg.train.compile, device) else "eager"  # what the loop runs
        mode = default if default in modes else modes[0]
        step_rate = max(r[1] / r[2] for r in rows if r[1] == rays_list[-1] and r[0] == mode)
        print(f"mip360 train      {loop_rate:,.0f} rays/s over {args.loop} steps ({rays_list[-1]} rays, {default} by "
              f"default here): {loop_rate / step_rate:.1%} of the benchmark's {mode} step")

    torch.manual_seed(0)
    model, opt, loss_fn, params = build(cfg, device, bf16, False)
    x = Inputs(rays_list[0], model.n_levels(), device)
    gemms, odd = unaligned_gemms(functools.partial(train_step, model, opt, loss_fn, params,
                                                   cfg.train.grad_max_norm, (x.o, x.d, x.vd), x.gt, x.frac,
                                                   x.jitter))
    print(f"GEMMs per step    {gemms}, {len(odd)} with a dimension not a multiple of 16"
          + (f" (e.g. {sorted(set(odd))[:4]})" if odd else ""))


if __name__ == "__main__":
    main()
