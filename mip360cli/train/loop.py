"""The training loop: rays from the cache, the three-level model, losses, checkpoints, resume."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import Config, config_hash, config_to_dict, save_config
from ..core.device import compile_enabled, mlp_dtype, resolve_device
from ..data.cache import RayCache, build_cache, default_cache_path, option_fields
from ..data.cameras import Cameras, cameras_to_tensors, pixel_rays
from ..core.errors import UserError
from ..eval import metrics
from ..core.files import atomic_write_text, ensure_writable_dir, process_lock
from ..model import losses
from ..model.model import COMPILE_PREFIX, Level, Mip360, load_plain_state, plain_state_dict
from ..core.progress import info, progress_bar, warn
from ..render.run import render_image
from ..render.writers import depth_range, depth_to_color, to_uint8, write_png
from . import checkpoint as ckpt
from ..core import distributed
from .batches import Prefetcher, RayBatcher
from .board import Board, tensorboard_enabled
from .schedule import learning_rate


class CannotResume(UserError):
    """The run's last checkpoint cannot be continued with this config, cache or version (``--restart``)."""


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted at step {step}")
        self.step, self.signum = step, signum


@dataclass
class TrainSummary:
    run: Path
    step: int
    resumed_from: int
    last_psnr: float
    val_psnr: float | None
    rays_per_s: float
    nonfinite_steps: int


# ----------------------------------------------------------------------------- setup helpers


def open_cache(data: Path, cfg: Config, env: distributed.DistEnv, explicit: set[str] | None = None) -> RayCache:
    """DATA is a cache file, or a dataset folder whose cache is built or checked first.

    ``explicit``: the dotted keys given on the command line; the existing cache's
    options are kept for all others (see :func:`~mip360cli.data.cache.build_cache`).
    """
    if not data.exists():
        raise UserError(f"{data} does not exist", hint="give a dataset folder or a cache made by `mip360 preprocess`")
    if data.is_dir():
        path = default_cache_path(data, cfg.cache)
        if env.local_rank == 0:
            summary = build_cache(data, cfg.data, cfg.cache, out=path, explicit=explicit)
            info(f"ray cache {summary.path} ({summary.status}, {summary.rays:,} rays, {summary.source})")
        distributed.barrier(env)
    else:
        path = data
    return RayCache(path)


def record_cache_options(cfg: Config, cache: RayCache) -> None:
    """A cache fixes the options it was built with; the run's config records those."""
    for name, _, obj, field in option_fields(cfg.data, cfg.cache):
        if name in cache.options and name != "format":
            setattr(obj, field, cache.options[name])


def cameras_json(cameras: Cameras, cache: RayCache) -> str:
    return json.dumps({
        "cache": str(cache.path.resolve()),
        "convention": "OpenCV axes (x right, y down, z forward), camera-to-world, normalized scene",
        "transform_input_to_normalized": cache.transform.tolist(),
        "train": cache.train.tolist(), "test": cache.test.tolist(),
        "cameras": [{"name": cameras.names[i], "K": cameras.K[i].tolist(), "c2w": cameras.c2w[i].tolist(),
                     "width": int(cameras.width[i]), "height": int(cameras.height[i]),
                     "dist": cameras.dist[i].tolist(), "image_path": str(cameras.image_paths[i])}
                    for i in range(len(cameras))],
    }, indent=1)


@contextmanager
def stop_signals() -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step."""
    state = {"signum": 0}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state["signum"]:  # a second signal: stop now
            raise KeyboardInterrupt
        state["signum"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def jitter_for(seed: int, step: int, shards: list[int], sizes: list[int], levels: int,
               device: torch.device) -> torch.Tensor:
    """Single-jitter offsets (sum(sizes), levels), a pure function of (seed, step, shard, device type).

    Drawn on the device from a generator seeded per step (no host work, no copy).
    """
    parts = []
    for shard, n in zip(shards, sizes):
        g = torch.Generator(device=device).manual_seed(hash((seed, step, shard)) & 0x7FFF_FFFF_FFFF_FFFF)
        parts.append(torch.rand(n, levels, generator=g, device=device))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class DeviceStats:
    """A training step's figures, kept on the device between reads.

    ``record`` is a few device operations per step (no host sync); ``read``
    brings back: steps skipped since the last read, the longest run of skipped
    steps since then (carried over the read), the MSE of the last finite step
    and the last step's loss terms (the mean over processes).
    """

    TERMS = ("loss", "data", "interlevel", "distortion")

    def __init__(self, device: torch.device, step: int):
        self.step = torch.tensor(float(step), device=device)  # the step as a tensor: train_frac without a copy
        # skipped since the last read, current run of skipped steps, longest run, last finite mse, then TERMS
        self.values = torch.zeros(4 + len(self.TERMS), device=device)
        self.values[3] = float("nan")

    def record(self, finite: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        bad = 1.0 - finite
        v = self.values
        run = (v[1] + 1.0) * bad
        mse = torch.where(finite > 0, terms["mse"].detach().float(), v[3])
        latest = torch.stack([terms[k].detach().float() for k in self.TERMS])
        self.values = torch.cat([torch.stack([v[0] + bad, run, torch.maximum(v[2], run), mse]), latest])
        self.step += 1

    def read(self, env: distributed.DistEnv) -> tuple[int, int, float, list[float]]:
        v = self.values
        terms = distributed.all_mean(torch.nan_to_num(v[4:], nan=float("inf")), env)
        values = v[:4].tolist() + terms.tolist()
        self.values = torch.cat([torch.stack([torch.zeros_like(v[0]), v[1], v[1], v[3]]), v[4:]])
        return int(values[0]), int(values[2]), values[3], values[4:]


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Adam:
    """Fused Adam (CPU and CUDA): it skips a step on the device when ``found_inf`` is set (no host sync)."""
    tc = cfg.train
    return torch.optim.Adam(model.parameters(), lr=tc.lr_init, betas=(tc.adam_beta1, tc.adam_beta2),
                            eps=tc.adam_eps, fused=True)


def load_optimizer_state(optimizer: torch.optim.Adam, state: dict) -> None:
    """Adam's moments and step counts from a checkpoint, kept fused whatever the writer used (earlier
    versions used the non-fused Adam on the CPU: its state is the same, its flags are not)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st:  # the fused kernels want the step count on the parameter's device, float32
                st["step"] = torch.as_tensor(st["step"], dtype=torch.float32).to(p.device)


def start_viewer(model: Mip360, cache: RayCache, run: Path, device: torch.device, options: dict, cfg: Config):
    """The web viewer on the model being trained (``train --viewer``): rendering between steps."""
    from ..view.core import ViewerCore
    from ..view.server import ShownCameras, TrainingViewer, Viewer

    core = ViewerCore(model, device, chunk=cfg.render.chunk_rays, budget_s=options.get("budget_s", 0.1))
    viewer = Viewer(core, ShownCameras.training(cache.cameras, cache.train), cache.transform, run / "camera_paths",
                    host=options.get("host", "127.0.0.1"), port=int(options.get("port", 7007)), background=False,
                    title=f"mip360 · training {run.name}")
    info(f"viewer of the training at {viewer.url}")
    return TrainingViewer(viewer, share=options.get("share", 0.08))


def compute_losses(levels: list[Level], gt: torch.Tensor, cfg: Config) -> dict[str, torch.Tensor]:
    """Charbonnier data loss on the NeRF level, interlevel loss per proposal level, distortion."""
    last = levels[-1]
    data = losses.charbonnier(last.rgb, gt)
    inter = sum(losses.interlevel(last.s, last.weights, lv.s, lv.weights).mean() for lv in levels[:-1])
    dist = losses.distortion(last.s, last.weights).mean()
    total = data + cfg.train.interlevel_weight * inter + cfg.train.distortion_weight * dist
    mse = ((last.rgb.detach() - gt) ** 2).mean()
    return {"loss": total, "data": data, "interlevel": inter, "distortion": dist, "mse": mse}


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn, params: list[torch.Tensor],
               max_norm: float, rays: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gt: torch.Tensor,
               train_frac: torch.Tensor, jitter: torch.Tensor,
               env: distributed.DistEnv | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimization step, all on the device (no value is read back).

    Args:
        net: the model (or its DDP wrapper); optimizer: a fused Adam (it skips the update on
            the device when the step is not finite); loss_fn: ``levels, gt -> terms``.
        rays: origins, directions, viewdirs (R, 3); gt: (R, 3) in [0, 1];
        train_frac: 0-d tensor; jitter: (R, levels).
    Returns:
        finite: 0-d float tensor, 1 when the step was applied (the same on every process);
        the loss terms (tensors).
    """
    levels = net(*rays, train_frac=train_frac, jitter=jitter)
    terms = loss_fn(levels, gt)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    finite = (torch.isfinite(terms["loss"].detach()) & torch.isfinite(grad_norm)).float()
    if env is not None and env.enabled:  # every process skips the same steps
        distributed.all_min_(finite, env)
    optimizer.found_inf = 1.0 - finite
    optimizer.step()
    return finite, terms


def validate(model: Mip360, cache: RayCache, run: Path, step: int, chunk: int | str,
             device: torch.device) -> tuple[float, np.ndarray] | None:
    """Render held-out view 0; write GT | render | depth to RUN/val/; return its PSNR and the panel
    (H, 3W, 3) uint8."""
    if len(cache.test) == 0:
        return None
    was_training = model.training
    model.eval()
    i = int(cache.test[0])
    cams = cache.cameras
    out = render_image(model, cams.K[i], cams.c2w[i], cams.dist[i], int(cams.width[i]), int(cams.height[i]),
                       chunk, device)
    model.train(was_training)
    gt = cache.test_image(0)
    rgb = np.clip(out["rgb"], 0, 1)
    psnr = metrics.psnr(rgb, gt / 255.0)
    depth = out["median_depth"]
    panel = np.concatenate([gt, to_uint8(rgb), depth_to_color(depth, *depth_range([depth]))], axis=1)
    write_png(run / "val" / f"step_{step:07d}.png", panel)
    return psnr, panel


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after ``step`` (by the part of a run a resume replays).

    A line that is not a complete JSON record (a crash or a full disk in the middle of
    a write) is dropped with a warning: it must not make the run unresumable.
    """
    if not path.exists():
        return
    kept, broken = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else None
            if record is not None and record["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            broken += 1
    if broken:
        warn(f"{path}: dropped {broken} incomplete line(s) (an earlier run was stopped while writing)")
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ----------------------------------------------------------------------------- the loop


def train(data: str | Path, run: str | Path, cfg: Config, restart: bool = False,
          data_shards: int | None = None, explicit: set[str] | None = None,
          viewer: dict | None = None) -> TrainSummary:
    """Train (or resume) a run.

    Args:
        data: a ray cache (.h5) or a dataset folder (its cache is built or checked first).
        run: the run directory (config.yaml, cameras.json, checkpoints/, metrics.jsonl, val/).
        cfg: the resolved config.
        restart: discard the run's checkpoints and start over.
        data_shards: in a single process, read this many data shards (default 1) so the global
            batch matches a run on that many processes (used to check DDP against one process).
        explicit: dotted keys the user gave on the command line; a dataset folder's existing
            cache keeps its options for every other key. None: ``cfg`` decides all.
        viewer: ``{"host": ..., "port": ...}`` to serve the web viewer from rank 0 while training.
    """
    data, run = Path(data), Path(run)
    tc = cfg.train
    device = resolve_device(tc.device)
    env = distributed.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank if env.enabled else (device.index or 0))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif env.local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world))
    try:
        with contextlib.ExitStack() as stack:
            if env.is_main:  # one training per run folder: a second one would mix checkpoints and metrics
                stack.enter_context(process_lock(run / ".mip360.lock", f"the run folder {run}"))
                ckpt.remove_leftovers(run)
            return _train(data, run, cfg, restart, data_shards, device, env, explicit, viewer)
    finally:
        distributed.shutdown(env)


def _train(data: Path, run: Path, cfg: Config, restart: bool, data_shards: int | None, device: torch.device,
           env: distributed.DistEnv, explicit: set[str] | None, viewer: dict | None = None) -> TrainSummary:
    tc = cfg.train
    if env.is_main:
        ensure_writable_dir(run)
    cache = open_cache(data, cfg, env, explicit)
    record_cache_options(cfg, cache)
    num_shards = env.world if env.enabled else (data_shards or 1)
    shards = [env.rank] if env.enabled else list(range(num_shards))
    if tc.batch_rays % num_shards:
        raise UserError(f"train.batch_rays={tc.batch_rays} does not split evenly over {num_shards} processes",
                        hint=f"use a multiple of {num_shards}")
    per_shard = tc.batch_rays // num_shards

    torch.manual_seed(tc.seed)
    model = Mip360.from_config(cfg.model, cfg.data).to(device)
    if device.type == "cpu" and tc.precision == "bf16" and env.is_main:
        warn("train.precision=bf16 is ignored on the CPU: the MLPs run in fp32 there (bf16 is for CUDA)")
    model.mlp_dtype = mlp_dtype(tc.precision, device)
    model.recompute_proposal = tc.recompute_proposal
    loss_fn = functools.partial(compute_losses, cfg=cfg)
    if compile_enabled(tc.compile, device):
        model.compile_forward()
        loss_fn = torch.compile(loss_fn, dynamic=False)
    optimizer = make_optimizer(model, cfg)

    # Resume, or start over.
    start_step, nonfinite_total = 0, 0
    existing = ckpt.list_checkpoints(run)
    resolved = config_to_dict(cfg)
    fingerprint = str(cache.file.attrs["fingerprint"])
    if existing and restart:
        distributed.barrier(env)
        if env.is_main:
            for _, p in existing:
                p.unlink(missing_ok=True)
            (run / "metrics.jsonl").unlink(missing_ok=True)
            info(f"--restart: removed {len(existing)} checkpoint(s) of {run}")
        distributed.barrier(env)
    elif existing:
        step0, path = existing[-1]
        state = ckpt.load_checkpoint(path)
        if any(k.replace(COMPILE_PREFIX, "") == "nerf.view.weight" for k in state["model"]):
            # The earlier, unpadded layer layout: its weights convert (render and eval read it), its Adam
            # moments do not.
            raise CannotResume(f"cannot resume {run}: {path.name} was written by an earlier mip360 whose layers "
                            "had other shapes; it renders and evaluates, but training cannot continue from it",
                            hint="start over with --restart (or use another --run)")
        breaking, harmless = ckpt.config_changes(state["config"], resolved)
        if state.get("cache_fingerprint") != fingerprint:
            breaking.append("the ray cache (its images, cameras or options)")
        if breaking:
            raise CannotResume(f"cannot resume {run}: the config changed in a way the checkpoint at step {step0} "
                            f"cannot follow: {', '.join(breaking)}",
                            hint="start over with --restart, use another --run, or undo the change")
        if harmless:
            info(f"resuming with changed options: {', '.join(harmless)}")
        load_plain_state(model, state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        start_step, nonfinite_total = int(state["step"]), int(state.get("nonfinite_total", 0))
        if env.is_main:
            info(f"resuming {run} from step {start_step} ({path.name})")
    if start_step >= tc.max_steps:
        info(f"{run} already trained to step {start_step} (train.max_steps={tc.max_steps})")

    if env.is_main:
        save_config(cfg, run / "config.yaml")
        atomic_write_text(run / "cameras.json", cameras_json(cache.cameras, cache))
        _truncate_metrics(run / "metrics.jsonl", start_step)

    batchers = [RayBatcher(cache, s, num_shards, per_shard, tc.seed) for s in shards]
    for b in batchers:
        b.seek(start_step)
    tensors = cameras_to_tensors(cache.cameras, device)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if env.enabled else model
    params = [p for p in model.parameters() if p.requires_grad]
    levels_n = model.n_levels()
    max_norm = tc.grad_max_norm if tc.grad_max_norm > 0 else float("inf")
    reader_position: list[dict] = [b.position() for b in batchers]

    # What the loop needs to know of each step stays on the device and is read only every few steps
    # (flush): a read makes the host wait for the GPU, and the host must stay ahead of it.
    dev = DeviceStats(device, start_step)
    metrics_file = open(run / "metrics.jsonl", "a") if env.is_main else None
    step, last_psnr, val_psnr = start_step, float("nan"), None
    window_t, window_steps, rays_per_s = time.perf_counter(), 0, 0.0
    saved_at, flushed_at = start_step, start_step
    stop_check_every = min(tc.log_every, 10)  # several processes agree to stop at a step every few steps

    def save(step: int) -> None:
        if env.is_main:
            ckpt.save_checkpoint(run, step, {
                "step": step, "model": plain_state_dict(model), "optimizer": optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state()}, "config": resolved, "config_hash": config_hash(cfg),
                "cache_fingerprint": fingerprint, "nonfinite_total": nonfinite_total,
                "reader": reader_position if not env.enabled else reader_position[0],
            }, tc.keep_checkpoints)

    def flush(step: int) -> list[float]:
        """Read the device's figures; warn of skipped steps, stop a diverged run. Returns the step's
        loss, data, interlevel, distortion (mean over processes)."""
        nonlocal nonfinite_total, last_psnr, flushed_at
        skipped, worst_run, last_mse, terms = dev.read(env)
        if skipped:
            nonfinite_total += skipped
            warn(f"non-finite loss or gradient, step skipped: {skipped} of steps {flushed_at + 1}-{step} "
                 f"({nonfinite_total} in all)")
        if worst_run >= tc.max_nonfinite:
            last = ckpt.list_checkpoints(run)
            raise UserError(
                f"training diverged: {tc.max_nonfinite} steps in a row had a non-finite loss or gradient "
                f"({worst_run} by step {step})",
                hint=(f"the last good checkpoint is {last[-1][1]}; " if last else "")
                + "lower train.lr_init or check the data, then run again to resume")
        if last_mse == last_mse:  # some step was finite
            last_psnr = float(losses.mse_to_psnr(last_mse))
        flushed_at = step
        return terms

    board = Board(run / "tensorboard" if env.is_main and tensorboard_enabled(tc.tensorboard) else None,
                  start_step)
    live = start_viewer(model, cache, run, device, viewer, cfg) if viewer and env.is_main else None
    prefetch = Prefetcher(batchers, device)
    try:
        with stop_signals() as sig, progress_bar("training", tc.max_steps, "steps", completed=start_step,
                                                 interval=10.0) as bar:
            while step < tc.max_steps:
                lr = learning_rate(step, tc.lr_init, tc.lr_final, tc.max_steps, tc.lr_delay_steps, tc.lr_delay_mult)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                cam, u, v, rgb, reader_position = prefetch.next()
                o, d, vd = pixel_rays(tensors["K"], tensors["c2w"], tensors["dist"], cam, u, v)
                gt = rgb.float() / 255.0
                jitter = jitter_for(tc.seed, step, shards, [per_shard] * len(shards), levels_n, device)
                finite, terms = train_step(net, optimizer, loss_fn, params, max_norm, (o, d, vd), gt,
                                           dev.step / tc.max_steps, jitter, env)
                dev.record(finite, terms)
                if live is not None:
                    live.between_steps()
                step += 1
                window_steps += 1

                stop = bool(sig["signum"]) if not env.enabled else (
                    step % stop_check_every == 0 and distributed.any_flag(bool(sig["signum"]), device, env))
                logging = step % tc.log_every == 0 or step == tc.max_steps
                saving = step % tc.checkpoint_every == 0 or step == tc.max_steps or stop
                validating = bool(tc.val_every and step % tc.val_every == 0) or step == tc.max_steps
                if logging or saving or validating:  # the same steps on every process: flush all-reduces
                    loss, data_, inter, distortion = flush(step)
                    status = f"loss {loss:.4f}  psnr {last_psnr:.2f}  lr {lr:.2e}"
                    if logging:
                        now = time.perf_counter()
                        rays_per_s = window_steps * tc.batch_rays / max(now - window_t, 1e-9)
                        window_t, window_steps = now, 0
                        record = {"loss": loss, "data": data_, "interlevel": inter, "distortion": distortion,
                                  "psnr": last_psnr, "lr": lr, "rays_per_s": round(rays_per_s, 1),
                                  "nonfinite": nonfinite_total}
                        if metrics_file:
                            metrics_file.write(json.dumps({"step": step, **record}) + "\n")
                            metrics_file.flush()
                        board.scalars(step, record)
                    bar.advance(1, status=status + (f"  {rays_per_s:,.0f} rays/s" if rays_per_s else ""))
                else:
                    bar.advance(1)
                if saving and (saved_at != step):
                    save(step)
                    saved_at = step
                if validating and env.is_main:
                    val = validate(model, cache, run, step, cfg.render.chunk_rays, device)
                    if val is not None:
                        val_psnr = val[0]
                        board.validation(step, *val)
                        if metrics_file:
                            metrics_file.write(json.dumps({"step": step, "val_psnr": val_psnr}) + "\n")
                            metrics_file.flush()
                if stop:  # SIGINT/SIGTERM (in some process): all stop at this step, checkpoint written
                    raise Interrupted(step, sig["signum"] or signal.SIGTERM)
    finally:
        prefetch.close()
        board.close()
        if live is not None:
            live.close()
        if metrics_file:
            metrics_file.close()
        cache.close()
    return TrainSummary(run, step, start_step, last_psnr, val_psnr, rays_per_s, nonfinite_total)
