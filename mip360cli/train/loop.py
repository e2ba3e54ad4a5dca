"""The training loop: rays from the cache, the multi-level model, losses, checkpoints, resume.

:func:`train` runs a :class:`Trainer` in three pieces: :meth:`~Trainer.setup` (cache, model,
optimizer), :meth:`~Trainer.resume` (a checkpoint, or a fresh start) and :meth:`~Trainer.loop`.
What happens around the steps (metrics.jsonl, TensorBoard, a live viewer) is done by hooks
(:mod:`.hooks`); the loop itself only trains, validates and saves.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import Config, config_hash, config_to_dict, save_config
from ..core import distributed
from ..core.device import mlp_dtype, precision_line, resolve_device
from ..core.memory import available_bytes, require
from ..core.errors import Interrupted, UserError
from ..core.files import ensure_writable_dir, process_lock
from ..core.files import format_bytes
from ..core.progress import format_duration, info, parse_duration, progress_bar, warn
from ..data.cache import RayCache, build_cache, default_cache_path, option_fields, stored_info
from ..data.cameras import cameras_to_tensors
from ..model import losses
from ..model.model import (COMPILE_PREFIX, load_plain_state, parameter_count, plain_state_dict,
                           training_bytes)
from ..runs import checkpoints as ckpt
from ..runs.cameras_file import write_cameras_json
from ..runs.folder import RunFolder
from ..runs.hooks import TrainContext, TrainHook
from ..runs.load import build_model
from ..runs.views import nearest_camera, render_image
from ..runs.writers import depth_range, depth_to_color, to_uint8, write_png
from .batches import Prefetcher, RayBatcher, too_few_buckets
from .hooks import standard_hooks
from .step import (DeviceStats, RayStep, compute_losses, load_optimizer_state, make_optimizer, parameter_groups,
                   set_learning_rates, train_step)


class CannotResume(UserError):
    """The run's last checkpoint cannot be continued with this config, cache or version (``--restart``)."""


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


def check_buckets(data: Path, cfg: Config, explicit: set[str], processes: int) -> None:
    """Before starting processes: a cache with fewer buckets than processes is an error here, in one message,
    not one per process under torchrun's traceback."""
    path = data if data.suffix == ".h5" else default_cache_path(data, cfg.cache)
    found = stored_info(path) if "cache.bucket_rays" not in explicit or data.suffix == ".h5" else None
    if found is not None and found["n_buckets"] < processes:
        raise too_few_buckets(path, found["n_buckets"], found["n_rays"], processes)


def default_run(data: Path) -> Path:
    """``runs/<DATA name>``: the run folder of a dataset folder or a cache file."""
    return Path("runs") / (data.stem if data.suffix == ".h5" else data.resolve().name)


def record_cache_options(cfg: Config, cache: RayCache) -> None:
    """A cache fixes the options it was built with; the run's config records those."""
    for name, _, obj, field in option_fields(cfg.data, cfg.cache):
        if name in cache.options and name != "format":
            setattr(obj, field, cache.options[name])


@contextmanager
def stop_signals() -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step."""
    state = {"signum": 0}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state["signum"]:  # a second signal: stop now
            raise Interrupted("interrupted again before the checkpoint was written: the run resumes from the "
                              "last one", signum)
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


PAPER_BATCH = 16384


def step_bytes(cfg: Config, device: torch.device) -> tuple[float, float]:
    """(fixed, per ray) bytes of a training step of ``cfg`` on ``device``, by the estimate."""
    tc = cfg.train
    value_bytes = 2 if mlp_dtype(tc.precision, device) is not None else 4
    fixed = training_bytes(cfg.model, 0, value_bytes, tc.recompute_proposal)
    return fixed, training_bytes(cfg.model, 1, value_bytes, tc.recompute_proposal) - fixed


def resolve_batch(cfg: Config, device: torch.device, shards: int, run: Path, env: distributed.DistEnv) -> None:
    """``train.batch_rays=auto``: the paper's 16384 rays where a step of them fits the device, else the largest
    power of two that does (the same on every process), with ``lr_init`` and ``lr_final`` scaled by the square
    root of the ratio. A run that has checkpoints keeps the batch and rates it was trained with."""
    tc = cfg.train
    if tc.batch_rays != "auto":
        return
    existing = ckpt.list_checkpoints(run)
    if existing:
        try:
            old = ckpt.load_checkpoint(existing[-1][1])["config"]["train"]
            batch, lr_init, lr_final = int(old["batch_rays"]), float(old["lr_init"]), float(old["lr_final"])
        except (KeyError, TypeError, ValueError, UserError):
            batch = None
        if batch:
            tc.batch_rays, tc.lr_init, tc.lr_final = batch, lr_init, lr_final
            return
    fixed, per_ray = step_bytes(cfg, device)
    per_shard = int((available_bytes(device) * 0.9 - fixed) // per_ray)
    batch = min(PAPER_BATCH, max(per_shard, 0) * shards)
    batch = 1 << (batch.bit_length() - 1) if batch >= shards else shards  # too small: check_step_fits says so
    if env.enabled:  # the smallest process's choice, for all
        t = torch.tensor([batch], dtype=torch.float64, device=device)
        distributed.all_min_(t, env)
        batch = int(t.item())
    batch -= batch % shards
    scale = (batch / PAPER_BATCH) ** 0.5
    tc.batch_rays = batch
    if batch < PAPER_BATCH:
        tc.lr_init, tc.lr_final = tc.lr_init * scale, tc.lr_final * scale
        if env.is_main:
            info(f"train.batch_rays=auto: {batch:,} rays a step ({PAPER_BATCH:,} would need about "
                 f"{format_bytes(fixed + per_ray * PAPER_BATCH / shards)} a process, "
                 f"{format_bytes(available_bytes(device))} is free); learning rates scaled by "
                 f"sqrt({batch}/{PAPER_BATCH}) = {scale:.3g}: lr_init "
                 f"{tc.lr_init:.3g}, lr_final {tc.lr_final:.3g}")
    elif env.is_main:
        info(f"train.batch_rays=auto: {batch:,} rays a step (the paper's; it fits)")


def check_step_fits(cfg: Config, device: torch.device, shards: int) -> None:
    """Refuse a training step that cannot fit the device's memory (before anything is built or allocated),
    with the figure and a batch that fits."""
    tc, m = cfg.train, cfg.model
    per_shard = tc.batch_rays // shards
    fixed, per_ray = step_bytes(cfg, device)
    fits = max(0, int((available_bytes(device) * 0.9 - fixed) // per_ray)) * shards
    require(fixed + per_ray * per_shard, device, f"a training step of {per_shard:,} rays per process with this "
            f"model ({parameter_count(m):,} parameters)",
            hint=(f"lower train.batch_rays (about {fits:,} would fit; train.batch_rays=auto picks what fits), or "
                  "train on a larger device" if fits else
                  "the model alone does not fit: lower model.nerf.width or depth, or train on a larger device"))


def render_validation_view(model, cache: RayCache, run: RunFolder, step: int, chunk: int | str,
                           device: torch.device) -> tuple[float, np.ndarray] | None:
    """Render held-out view 0; write photo | render | depth to RUN/val/; return its PSNR and the panel
    (H, 3W, 3) uint8 (None when the run holds no view out)."""
    if len(cache.test) == 0:
        return None
    was_training = model.training
    model.eval()
    i = int(cache.test[0])
    cams = cache.cameras
    code = None
    if model.images.codes is not None:  # the nearest training camera's appearance, as eval scores it
        code = model.images.codes[nearest_camera(cams.c2w[cache.train], cams.c2w[i])].detach()
    out = render_image(model, cams.K[i], cams.c2w[i], cams.dist[i], int(cams.width[i]), int(cams.height[i]),
                       chunk, device, code=code)
    model.train(was_training)
    gt = cache.test_image(0)
    rgb = np.clip(out["rgb"], 0, 1)
    psnr = float(losses.mse_to_psnr(float(np.mean((rgb.astype(np.float64) - gt / 255.0) ** 2))))
    depth = out["median_depth"]
    panel = np.concatenate([gt, to_uint8(rgb), depth_to_color(depth, *depth_range([depth]))], axis=1)
    write_png(run.val / f"step_{step:07d}.png", panel)
    return psnr, panel


# ----------------------------------------------------------------------------- the loop


def train(data: str | Path, run: str | Path, cfg: Config, restart: bool = False,
          data_shards: int | None = None, explicit: set[str] | None = None,
          hooks: Sequence[TrainHook] = ()) -> TrainSummary:
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
        hooks: called as training goes, in the first process, besides the standard ones
            (metrics.jsonl, TensorBoard): e.g. the live viewer of ``mip360 train --viewer``.
    """
    data, run = Path(data), RunFolder(Path(run))
    device = resolve_device(cfg.train.device)
    env = distributed.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank if env.enabled else (device.index or 0))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif env.local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world))
    try:
        resolve_batch(cfg, device, env.world if env.enabled else (data_shards or 1), run.path, env)
        check_step_fits(cfg, device, env.world if env.enabled else (data_shards or 1))
        with contextlib.ExitStack() as stack:
            if env.is_main:  # one training per run folder: a second one would mix checkpoints and metrics
                run.check_for_training()
                stack.enter_context(process_lock(run.lock, f"the run folder {run.path}"))
                ckpt.remove_leftovers(run.path)
            trainer = Trainer(data, run, cfg, device, env, explicit, data_shards, [*standard_hooks(cfg), *hooks])
            stack.callback(trainer.close)
            trainer.setup()
            trainer.resume(restart)
            return trainer.loop()
    finally:
        distributed.shutdown(env)


class Trainer:
    """One training run on this process, in pieces: :meth:`setup`, :meth:`resume`, :meth:`loop`."""

    def __init__(self, data: Path, run: RunFolder, cfg: Config, device: torch.device, env: distributed.DistEnv,
                 explicit: set[str] | None = None, data_shards: int | None = None,
                 hooks: Sequence[TrainHook] = ()):
        self.data, self.run, self.cfg, self.device, self.env = data, run, cfg, device, env
        self.explicit, self.data_shards = explicit, data_shards
        self.hooks = list(hooks) if env.is_main else []
        self.start_step, self.nonfinite_total = 0, 0
        self.seconds_before = 0.0  # training time of the run before this process (its checkpoint's)
        self.process_start = time.perf_counter()
        self.budget_before = 0.0  # the time budget's clock: the commands' time on the run before this process
        self.budget = parse_duration(cfg.train.time_budget) if cfg.train.time_budget else 0.0
        self.plan: dict | None = None  # the time budget's plan (max_steps), from the checkpoint or made here

    def close(self) -> None:
        """Close the cache (the run's files are written as they go)."""
        if getattr(self, "cache", None) is not None:
            self.cache.close()

    def setup(self) -> None:
        """The cache, this process's data shards, the model, the losses and the optimizer."""
        cfg, tc, env = self.cfg, self.cfg.train, self.env
        if env.is_main:
            ensure_writable_dir(self.run.path)
        self.cache = open_cache(self.data, cfg, env, self.explicit)
        record_cache_options(cfg, self.cache)
        self.num_shards = env.world if env.enabled else (self.data_shards or 1)
        self.shards = [env.rank] if env.enabled else list(range(self.num_shards))
        if tc.batch_rays % self.num_shards:
            raise UserError(f"train.batch_rays={tc.batch_rays} does not split evenly over {self.num_shards} "
                            "processes", hint=f"use a multiple of {self.num_shards}")
        self.per_shard = tc.batch_rays // self.num_shards
        torch.manual_seed(tc.seed)
        if self.device.type == "cpu" and tc.precision == "bf16" and env.is_main:
            warn("train.precision=bf16 is ignored on the CPU: the MLPs run in fp32 there (bf16 is for CUDA)")
        elif env.is_main:
            info(precision_line(tc.precision, self.device))
        self.model = build_model(cfg, self.device, len(self.cache.train))
        self.plain_loss_fn = self.loss_fn = functools.partial(compute_losses, cfg=cfg)
        if self.model.compiled:
            self.loss_fn = torch.compile(self.loss_fn, dynamic=False, backend=self.model.compile_backend)
        self.optimizer = make_optimizer(self.model, cfg)
        self.resolved = config_to_dict(cfg)
        self.fingerprint = str(self.cache.file.attrs["fingerprint"])

    def resume(self, restart: bool) -> None:
        """Continue from the run's last checkpoint, or start over (``restart``); write the run's files."""
        run, env = self.run, self.env
        existing = ckpt.list_checkpoints(run.path)
        if existing and restart:
            distributed.barrier(env)
            if env.is_main:
                removed = ckpt.remove_checkpoints(run.path)
                run.metrics.unlink(missing_ok=True)
                info(f"--restart: removed {removed} checkpoint(s) of {run.path}")
            distributed.barrier(env)
        elif existing:
            self._load(*existing[-1])
        if self.plan is not None:  # a run planned by its time budget ends at the planned step
            self.cfg.train.max_steps = self.plan["max_steps"]
            if env.is_main:
                budget = format_duration(self.plan["time_budget_s"])
                changed = (f"; the budget given now ({self.cfg.train.time_budget}) is not used: --restart to plan "
                           "again") if self.budget and abs(self.budget - self.plan["time_budget_s"]) > 1e-6 else ""
                info(f"following the plan made for the time budget of {budget}: {self.plan['max_steps']:,} steps"
                     f"{changed}")
        if self.start_step >= self.cfg.train.max_steps:
            info(f"{run.path} already trained to step {self.start_step} (train.max_steps={self.cfg.train.max_steps})")
        if env.is_main:
            save_config(self.cfg, run.config)
            write_cameras_json(run.cameras, self.cache.cameras, self.cache.train, self.cache.test,
                               self.cache.transform, self.cache.path, self.cache.image_source)

    def _load(self, step: int, path: Path) -> None:
        """Model, optimizer, RNG and counters of a checkpoint, once its config and cache are checked."""
        state = ckpt.load_checkpoint(path)
        ckpt.check_state(state, path, resumable=True)
        if any(k.replace(COMPILE_PREFIX, "") == "nerf.view.weight" for k in state["model"]):
            # The earlier, unpadded layer layout: its weights convert (render and eval read it), its Adam
            # moments do not.
            raise CannotResume(f"cannot resume {self.run.path}: {path.name} was written by an earlier mip360 whose "
                               "layers had other shapes; it renders and evaluates, but training cannot continue "
                               "from it", hint="start over with --restart (or use another --run)")
        breaking, harmless = ckpt.config_changes(state["config"], self.resolved)
        if state.get("cache_fingerprint") != self.fingerprint:
            breaking.append("the ray cache (its images, cameras or options)")
        if breaking:
            raise CannotResume(f"cannot resume {self.run.path}: the config changed in a way the checkpoint at step "
                               f"{step} cannot follow: {', '.join(breaking)}",
                               hint="start over with --restart, use another --run, or undo the change")
        if harmless:
            info(f"resuming with changed options: {', '.join(harmless)}")
        try:
            load_plain_state(self.model, state["model"])
            load_optimizer_state(self.optimizer, state["optimizer"])
            torch.set_rng_state(state["rng"]["torch"])
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
            raise CannotResume(f"cannot resume {self.run.path}: {path.name} does not fit this run's model and "
                               f"optimizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                               hint="it is damaged or from another run: delete it to resume from the one "
                                    "before, or start over with --restart") from None
        self.start_step, self.nonfinite_total = state["step"], state.get("nonfinite_total", 0)
        self.seconds_before = float(state.get("train_seconds", 0.0))
        self.budget_before = float(state.get("budget_seconds", self.seconds_before))
        plan = state.get("plan")
        if isinstance(plan, dict) and isinstance(plan.get("max_steps"), int) and plan["max_steps"] >= 1:
            self.plan = plan
        if self.env.is_main:
            info(f"resuming {self.run.path} from step {self.start_step} ({path.name})")

    def loop(self) -> TrainSummary:
        """Train from the start step to ``train.max_steps``; checkpoint on SIGINT/SIGTERM."""
        tc, cache = self.cfg.train, self.cache
        batchers = [RayBatcher(cache, s, self.num_shards, self.per_shard, tc.seed) for s in self.shards]
        for b in batchers:
            b.seek(self.start_step)
        self.reader_position: list[dict] = [b.position() for b in batchers]
        train_index = torch.as_tensor(cache.train, dtype=torch.long, device=self.device)
        step_module = RayStep(self.model, cameras_to_tensors(cache.cameras, self.device), train_index)
        self.net = DistributedDataParallel(step_module, device_ids=[self.device.index] if self.device.type == "cuda"
                                           else None) if self.env.enabled else step_module
        self.params, self.unclipped = parameter_groups(self.model)
        self.max_norm = tc.grad_max_norm if tc.grad_max_norm > 0 else float("inf")
        # What the loop needs to know of each step stays on the device and is read only every few steps
        # (flush): a read makes the host wait for the GPU, and the host must stay ahead of it.
        self.stats = DeviceStats(self.device, self.start_step)
        self.step, self.last_psnr, self.val_psnr, self.rays_per_s = self.start_step, float("nan"), None, 0.0
        self.window = (time.perf_counter(), 0)  # start and steps of the rays/s window
        self.saved_at = self.flushed_at = self.start_step
        self.started = time.perf_counter()
        self.timing: tuple[float, int] | None = None  # (time, step) where the timed steps began
        self.planned = False
        context = TrainContext(self.run, self.cfg, self.model, self.device, cache.cameras, cache.train,
                               cache.transform, self.start_step)
        if self.budget and self.plan is None:  # until the plan fixes it, the steps are the budget's
            tc.max_steps = 10**9
        prefetch = None
        try:
            for hook in self.hooks:
                hook.start(context)
            prefetch = Prefetcher(batchers, self.device)
            with stop_signals() as sig, progress_bar("training", tc.max_steps, "steps", completed=self.start_step,
                                                     interval=10.0) as bar:
                self.bar = bar
                while self.step < tc.max_steps:
                    self._train_one_step(prefetch)
                    self._plan_after_step()
                    self._after_step(sig, bar)
        finally:
            if prefetch is not None:
                prefetch.close()
            for hook in self.hooks:
                hook.close()
        return TrainSummary(self.run.path, self.step, self.start_step, self.last_psnr, self.val_psnr, self.rays_per_s,
                            self.nonfinite_total)

    def _train_one_step(self, prefetch: Prefetcher) -> None:
        tc, step = self.cfg.train, self.step
        self.lr = set_learning_rates(self.optimizer, step, self.cfg)
        cam, u, v, rgb, self.reader_position = prefetch.next()
        gt = rgb.float() / 255.0
        jitter = jitter_for(tc.seed, step, self.shards, [self.per_shard] * len(self.shards), self.model.n_levels(),
                            self.device)
        try:
            finite, terms = self._step((cam, u, v), gt, jitter)
        except torch.OutOfMemoryError:
            raise self._out_of_memory("a training step") from None
        self.stats.record(finite, terms)
        for hook in self.hooks:
            hook.between_steps(step + 1)
        self.step += 1
        self.window = (self.window[0], self.window[1] + 1)

    def _step(self, rays: tuple, gt: torch.Tensor, jitter: torch.Tensor):
        """One :func:`train_step`; the first one of a compiled model falls back to eager when compilation
        fails (``train.compile=auto``: one warning; ``true``: one error)."""
        def run():
            return train_step(self.net, self.optimizer, self.loss_fn, self.params, self.max_norm, rays, gt,
                              self.stats.step / self.cfg.train.max_steps, jitter, self.env, self.unclipped)

        if not (self.model.compiled and self.step == self.start_step):
            return run()
        try:
            return run()
        except (torch.OutOfMemoryError, UserError, Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # torch.compile fails in many ways: no compiler, an unsupported op, a backend bug
            lines = [x.strip() for x in str(e).splitlines() if x.strip()]
            # dynamo's "backend='inductor' raised:" is followed by what the backend raised
            first = " ".join(lines[:2] if lines and lines[0].endswith(":") else lines[:1])[:300]
            if self.cfg.train.compile is True:
                raise UserError(f"torch.compile failed at the first step ({type(e).__name__}: {first})",
                                hint="train with train.compile=false (or auto, which falls back to eager)") from e
            warn(f"torch.compile failed at the first step ({type(e).__name__}: {first}); training eagerly "
                 "instead (train.compile=false skips trying)")
            self.model.uncompile()
            self.loss_fn = self.plain_loss_fn
            self.optimizer.zero_grad(set_to_none=True)
            return run()

    def _out_of_memory(self, what: str) -> UserError:
        """The message of a CUDA out-of-memory error: the batch and chunk, what the device has, what would fit."""
        tc, device = self.cfg.train, self.device
        if device.type == "cuda":
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(device).total_memory
            peak = torch.cuda.max_memory_allocated(device)
        else:
            total, peak = available_bytes(device), 0
        fixed, per_ray = step_bytes(self.cfg, device)
        # what the estimate says fits in 80% of the device, below the batch that did not fit
        fits = int(max(0, total * 0.8 - fixed) // per_ray)
        fits = min(fits, self.per_shard // 2)
        fits = 1 << (fits.bit_length() - 1) if fits > 0 else 0
        chunk = self.cfg.render.chunk_rays
        where = f"{what} ran out of memory on {device}" + (f" ({format_bytes(total)}, at most "
                                                           f"{format_bytes(peak)} in use by this run)" if peak else "")
        batch = (f"train.batch_rays={tc.batch_rays} ({self.per_shard:,} rays a process), render.chunk_rays={chunk} "
                 "(validation renders)")
        hint = (f"train.batch_rays={fits * self.num_shards} would fit by the estimate (scale train.lr_init and "
                f"lr_final with it, README: Out of memory), or render.chunk_rays={min(fits, 4096) or 1024} if it "
                "was a validation render; or close what else uses the GPU") if fits else \
            "the model alone does not fit: lower model.nerf.width or depth, or train on a larger GPU"
        return UserError(f"{where}: {batch}", hint=hint)

    def _after_step(self, sig: dict, bar) -> None:
        """Log, checkpoint, validate and stop at the steps that ask for it (the same steps on every process)."""
        tc, step, env = self.cfg.train, self.step, self.env
        stop_check_every = min(tc.log_every, 10)  # several processes agree to stop at a step every few steps
        stop = bool(sig["signum"]) if not env.enabled else (
            step % stop_check_every == 0 and distributed.any_flag(bool(sig["signum"]), self.device, env))
        logging = step % tc.log_every == 0 or step == tc.max_steps
        saving = step % tc.checkpoint_every == 0 or step == tc.max_steps or stop
        validating = bool(tc.val_every and step % tc.val_every == 0) or step == tc.max_steps
        if logging or saving or validating:  # flush all-reduces: every process flushes at the same steps
            terms = self._flush()
            status = f"loss {terms[0]:.4f}  psnr {self.last_psnr:.2f}  lr {self.lr:.2e}"
            if logging:
                self._log(terms)
            bar.advance(1, status=status + (f"  {self.rays_per_s:,.0f} rays/s" if self.rays_per_s else ""))
        else:
            bar.advance(1)
        if saving and self.saved_at != step:
            self._save()
        if validating and env.is_main:
            self._validate()
        if stop:  # SIGINT/SIGTERM (in some process): all stop at this step, checkpoint written
            raise Interrupted(f"interrupted at step {step}: checkpoint saved; run the same command to resume",
                              sig["signum"] or signal.SIGTERM, step)

    # -- the plan: measured on the first steps, printed before going on

    PLAN_MIN_STEPS = 5

    def _plan_window(self) -> float:
        """Seconds of steps to time: 3 s (or 50 steps), or with a time budget 2% of it (from 3 s to 60 s)."""
        return min(60.0, max(3.0, 0.02 * self.budget)) if self.budget else 3.0

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _plan_after_step(self) -> None:
        """Time the steps after the first (which compiles and allocates); once enough are timed, print the plan
        and, with a time budget and no plan yet, fix ``train.max_steps`` (the same on every process)."""
        if self.planned:
            return
        done = self.step - self.start_step
        if done == 1:
            self.timing = (self._sync(), self.step)
            return
        if self.timing is None or (done - 1) % self.PLAN_MIN_STEPS:  # every process checks at the same steps
            return
        now = self._sync()
        elapsed = now - self.timing[0] >= self._plan_window() or (not self.budget and done > 50)
        if self.env.enabled:
            elapsed = distributed.any_flag(elapsed, self.device, self.env)
        if not elapsed:
            return
        self.planned = True
        seconds_per_step = (now - self.timing[0]) / (self.step - self.timing[1])
        if self.budget and self.plan is None:
            self._make_plan(seconds_per_step)
        if self.env.is_main:
            info(self._plan_line(seconds_per_step))

    def _make_plan(self, seconds_per_step: float) -> None:
        """Fix ``train.max_steps`` so that the steps, checkpoints and validations end within the budget; the plan
        goes into a checkpoint written now."""
        tc, step = self.cfg.train, self.step
        val_s = 0.0
        if self.env.is_main and len(self.cache.test):  # one validation render, timed (it is drawn at the end)
            t = time.perf_counter()
            self._validate()
            val_s = time.perf_counter() - t
        state_bytes = 16 * sum(p.numel() for p in self.model.parameters())  # weights and Adam moments, fp32
        ckpt_s = 0.5 + state_bytes / 200e6  # written at 200 MB/s at least
        figures = torch.tensor([seconds_per_step, val_s, ckpt_s,
                                self.budget_seconds()],
                               dtype=torch.float64, device=self.device)
        if self.env.enabled:  # the slowest process's figures, so that every process plans the same steps
            figures = -figures
            distributed.all_min_(figures, self.env)
            figures = -figures
        seconds_per_step, val_s, ckpt_s, spent = (float(x) for x in figures.cpu())
        per_step = seconds_per_step + ckpt_s / tc.checkpoint_every + (val_s / tc.val_every if tc.val_every else 0)
        left = 0.97 * self.budget - spent - 2 * ckpt_s - val_s  # this checkpoint, the last one, the last render
        planned = max(step + 1, step + int(left // per_step))
        tc.max_steps = planned
        self.bar.set_total(planned)
        self.plan = {"time_budget_s": self.budget, "max_steps": planned, "seconds_per_step": seconds_per_step,
                     "planned_at_step": step, "checkpoint_s": ckpt_s, "validation_s": val_s}
        if step >= planned - 1 and self.env.is_main:
            warn(f"the time budget of {format_duration(self.budget)} is spent by the start: training ends at "
                 f"step {planned}")
        self._save()

    def _replan(self, seconds_per_step: float) -> None:
        """Follow the machine's speed: until 80% of the planned steps, set ``max_steps`` again from the recent
        step rate when it moves the end by more than 1% (one process; several keep the first plan). The plan in
        the checkpoints is the one in effect."""
        tc, plan = self.cfg.train, self.plan
        if self.step >= 0.8 * tc.max_steps:
            return
        ckpt_s, val_s = plan["checkpoint_s"], plan["validation_s"]
        per_step = seconds_per_step + ckpt_s / tc.checkpoint_every + (val_s / tc.val_every if tc.val_every else 0)
        left = 0.97 * self.budget - self.budget_seconds() - ckpt_s - val_s
        planned = max(self.step + 1, self.step + int(left // per_step))
        if abs(planned - tc.max_steps) > 0.01 * tc.max_steps:
            tc.max_steps = plan["max_steps"] = planned
            plan["replanned_at_step"] = self.step
            self.bar.set_total(planned)

    def budget_seconds(self) -> float:
        """The time budget's clock: the time of the commands that trained this run, from their start (setup
        included), over all processes that resumed it."""
        return self.budget_before + time.perf_counter() - self.process_start

    def _plan_line(self, seconds_per_step: float) -> str:
        tc = self.cfg.train
        left = max(0, tc.max_steps - self.step) * seconds_per_step
        ends = time.strftime("%H:%M", time.localtime(time.time() + left))
        rate = tc.batch_rays / seconds_per_step
        what = (f"plan for the time budget of {format_duration(self.budget)}: {tc.max_steps:,} steps, "
                "checkpoints and validations included" if self.plan is not None else
                f"plan: {tc.max_steps:,} steps")
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            memory = (f"; peak GPU memory of a step {format_bytes(torch.cuda.max_memory_allocated(self.device))} of "
                      f"{format_bytes(total)}")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            memory = f"; peak memory of the process {format_bytes(peak)}"
        return (f"{what}; 1,000 steps take about {format_duration(1000 * seconds_per_step, estimate=True)} "
                f"({rate:,.0f} rays/s); the remaining {max(0, tc.max_steps - self.step):,} about "
                f"{format_duration(left, estimate=True)}, ending about {ends}{memory}")

    def _flush(self) -> list[float]:
        """Read the device's figures; warn of skipped steps, stop a diverged run. Returns the step's
        loss, data, interlevel, distortion (mean over processes)."""
        tc, step = self.cfg.train, self.step
        skipped, worst_run, last_mse, terms = self.stats.read(self.env)
        if skipped:
            self.nonfinite_total += skipped
            warn(f"non-finite loss or gradient, step skipped: {skipped} of steps {self.flushed_at + 1}-{step} "
                 f"({self.nonfinite_total} in all)")
        if worst_run >= tc.max_nonfinite:
            last = ckpt.list_checkpoints(self.run.path)
            raise UserError(
                f"training diverged: {tc.max_nonfinite} steps in a row had a non-finite loss or gradient "
                f"({worst_run} by step {step})",
                hint=(f"the last good checkpoint is {last[-1][1]}; " if last else "")
                + "lower train.lr_init or check the data, then run again to resume")
        if last_mse == last_mse:  # some step was finite
            self.last_psnr = float(losses.mse_to_psnr(last_mse))
        self.flushed_at = step
        return terms

    def _log(self, terms: list[float]) -> None:
        now = time.perf_counter()
        started, steps = self.window
        self.rays_per_s = steps * self.cfg.train.batch_rays / max(now - started, 1e-9)
        self.window = (now, 0)
        if steps and self.plan is not None and self.budget and not self.env.enabled:
            self._replan((now - started) / steps)
        loss, data, inter, distortion = terms
        record = {"loss": loss, "data": data, "interlevel": inter, "distortion": distortion, "psnr": self.last_psnr,
                  "lr": self.lr, "rays_per_s": round(self.rays_per_s, 1), "nonfinite": self.nonfinite_total}
        for hook in self.hooks:
            hook.log(self.step, record)

    def _save(self) -> None:
        step = self.step
        if self.env.is_main:
            path = ckpt.save_checkpoint(self.run.path, step, {
                "step": step, "model": plain_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                "rng": {"torch": torch.get_rng_state()}, "config": self.resolved,
                "config_hash": config_hash(self.cfg), "cache_fingerprint": self.fingerprint,
                "nonfinite_total": self.nonfinite_total,
                "train_seconds": self.seconds_before + time.perf_counter() - self.started,
                "budget_seconds": self.budget_seconds(),
                "reader": self.reader_position if not self.env.enabled else self.reader_position[0],
                **({"plan": self.plan} if self.plan is not None else {}),
            }, self.cfg.train.keep_checkpoints)
            for hook in self.hooks:
                hook.checkpoint(step, path)
        self.saved_at = step

    def _validate(self) -> None:
        try:
            val = render_validation_view(self.model, self.cache, self.run, self.step, self.cfg.render.chunk_rays,
                                         self.device)
        except torch.OutOfMemoryError:
            raise self._out_of_memory(f"the validation render at step {self.step}") from None
        if val is not None:
            self.val_psnr = val[0]
            for hook in self.hooks:
                hook.validation(self.step, *val)
