"""Several processes: re-launch through torch.distributed.run, and the process group inside it."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


ARGV_ENV = "MIP360_TORCHRUN_ARGV"


def torchrun_command(nproc: int, nnodes: int = 1, node_rank: int | None = None,
                     rdzv_endpoint: str | None = None, max_restarts: int = 0) -> list[str]:
    """The ``python -m torch.distributed.run ... -m mip360cli`` line for ``nproc`` processes per node.

    The command's own arguments travel in the environment (:data:`ARGV_ENV`): torchrun's
    argument parser would otherwise claim options such as ``--run`` as abbreviations of its own.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}",
           f"--max_restarts={max_restarts}"]
    if rdzv_endpoint:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}", "--rdzv_id=mip360"]
        if node_rank is not None:
            cmd.append(f"--node_rank={node_rank}")
    else:
        cmd.append("--standalone")
    return cmd + ["-m", "mip360cli"]


def check_processes(nproc: int, device: str | None) -> None:
    """``--gpus N`` on this machine: at most one process per GPU (when CUDA is used), else per CPU core."""
    cuda = torch.cuda.is_available() and (device or "auto") != "cpu"
    limit = torch.cuda.device_count() if cuda else (os.cpu_count() or 1)
    if not 1 <= nproc <= limit:
        what = f"{limit} GPU(s)" if cuda else f"no GPU in use and {limit} CPU core(s)"
        raise UserError(f"--gpus {nproc}: this machine has {what}", hint=f"use --gpus 1 to {limit}")


def relaunch(argv: list[str], nproc: int, **kwargs) -> int:
    """Run ``mip360 ARGV`` again under torch.distributed.run; return its exit code."""
    env = {**os.environ, ARGV_ENV: json.dumps(argv)}
    return subprocess.call(torchrun_command(nproc, **kwargs), env=env)


def init(device_type: str, timeout_s: float = 600.0) -> DistEnv:
    """Join the process group when launched by torch.distributed.run (NCCL on CUDA, gloo on CPU)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]),
                  int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return env


def all_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``values`` over all ranks (identity for one process)."""
    if env.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= env.world
    return values


def all_min_(values: torch.Tensor, env: DistEnv) -> None:
    """``values`` := the minimum over all ranks, in place (no host sync with NCCL)."""
    if env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MIN)


def any_flag(flag: bool, device: torch.device, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any (reads back: a host sync)."""
    if not env.enabled:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
