"""keep_freed_memory: a CPU training step reuses freed memory instead of faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import resource, sys, torch
from mip360cli.config import load_config
from mip360cli.core.cpualloc import keep_freed_memory
from mip360cli.model.model import Mip360
from mip360cli.train.step import compute_losses

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
cfg = load_config("tiny")
model = Mip360.from_config(cfg.model, cfg.data)
rays = 512
o = torch.zeros(rays, 3)
d = torch.nn.functional.normalize(torch.randn(rays, 3), dim=-1)


def step():  # forward and backward of a tiny training step: tensors of up to 4 MiB
    levels = model(o, d, d, train_frac=0.5, jitter=torch.rand(rays, model.n_levels()))
    compute_losses(levels, torch.rand(rays, 3), cfg)["loss"].backward()


for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_stops_page_faults_of_training_steps():
    _, system = _faults("system")
    kept, faults = _faults("keep")
    assert kept == "True"
    # glibc gives large blocks back and faults them in again: 8,000-12,000 page faults a step here
    # (512 rays, forward and backward); kept, a step needs 0-330
    assert faults < 1000 and faults * 10 < system, (system, faults)


def test_resolve_device_cpu_keeps_freed_memory():
    out = subprocess.run([sys.executable, "-c", "from mip360cli.core.device import resolve_device; "
                          "from mip360cli.core import cpualloc; resolve_device('cpu'); print(cpualloc._done)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("True" if sys.platform.startswith("linux") else "False")
