"""A busy machine: the tiny training step with other jobs on the cores, per OpenMP wait policy and thread count.

Other jobs (``--jobs`` processes spinning on the CPU, as a second training or a compile would) share
the cores with the step. OpenMP's threads wait for each other at the end of every parallel region;
with the default (active) policy a waiting thread spins, and when the thread it waits for has been
descheduled by another job, it spins for the whole time slice. Each figure is the median rays/s of
``--repeats`` runs of ``--steps`` steps in a fresh process (the policy is read when OpenMP starts),
and the ratio is against the same setting on the idle machine, measured in the same run.

    python benchmarks/busy.py                      # policies (default, passive, mip360's) x threads x 0/1/2 jobs
    python benchmarks/busy.py --jobs 0,1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
from mip360cli.config import load_config
from mip360cli.core.device import resolve_device
from mip360cli.runs.load import build_model
from mip360cli.train.step import compute_losses, make_optimizer, train_step

threads, steps, rays = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if threads:
    torch.set_num_threads(threads)
device = resolve_device("cpu")
cfg = load_config("tiny")
torch.manual_seed(0)
model = build_model(cfg, device)
opt = make_optimizer(model, cfg)
params = [p for p in model.parameters() if p.requires_grad]
g = torch.Generator().manual_seed(0)
o = torch.zeros(rays, 3)
d = torch.nn.functional.normalize(torch.randn(rays, 3, generator=g), dim=-1)
gt = torch.rand(rays, 3, generator=g)
jitter = torch.rand(rays, model.n_levels(), generator=g)
frac = torch.tensor(0.5)
loss = lambda levels, gt: compute_losses(levels, gt, cfg)
for _ in range(3):  # warm-up
    train_step(model, opt, loss, params, 0.05, (o, d, d), gt, frac, jitter)
t0 = time.perf_counter()
for _ in range(steps):
    train_step(model, opt, loss, params, 0.05, (o, d, d), gt, frac, jitter)
dt = time.perf_counter() - t0
print(json.dumps({"rays_per_s": steps * rays / dt, "threads": torch.get_num_threads()}))
"""


def spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def measure(policy: str, threads: int, steps: int, rays: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    if policy == "mip360":  # what the command line sets (core/threads.py)
        from mip360cli.core.threads import prefer_short_spin

        prefer_short_spin(env)
    elif policy.startswith("spin"):  # spin that many times, then sleep (libgomp's GOMP_SPINCOUNT)
        env["GOMP_SPINCOUNT"] = policy.removeprefix("spin")
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(steps), str(rays)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rays_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="default,passive,mip360",
                    help="OpenMP wait policies: default (active), passive, spinN (libgomp spins N times, then "
                         "sleeps), mip360 (what the command line sets) [default,passive,mip360]")
    ap.add_argument("--threads", default="0,1", help="torch threads; 0 = torch's default (one per core) [0,1]")
    ap.add_argument("--jobs", default="0,1,2", help="competing busy processes [0,1,2]")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rays", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    policies, threads = args.policies.split(","), [int(x) for x in args.threads.split(",")]
    jobs = [int(x) for x in args.jobs.split(",")]
    print(f"{os.cpu_count()} CPU cores, tiny preset, {args.rays} rays a step, {args.steps} steps a run, "
          f"median of {args.repeats} runs", flush=True)
    results: dict[tuple, float] = {}
    for n_jobs in jobs:
        stop = mp.Event()
        workers = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(n_jobs)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        try:
            for policy in policies:
                for t in threads:
                    rates = [measure(policy, t, args.steps, args.rays) for _ in range(args.repeats)]
                    results[policy, t, n_jobs] = statistics.median(rates)
                    idle = results.get((policy, t, 0))
                    ratio = f"  {results[policy, t, n_jobs] / idle:.2f} of idle" if idle and n_jobs else ""
                    print(f"jobs {n_jobs}  policy {policy:<8} threads {t or 'all':<4} "
                          f"{results[policy, t, n_jobs]:>9,.0f} rays/s{ratio}", flush=True)
        finally:
            stop.set()
            for w in workers:
                w.join()


if __name__ == "__main__":
    main()
