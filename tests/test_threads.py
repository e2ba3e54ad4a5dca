"""The OpenMP wait policy the command line sets (figures in benchmarks/RESULTS.md, not asserted here)."""

from __future__ import annotations

import subprocess
import sys

from mip360cli.core.threads import SPIN_COUNT, prefer_short_spin


def test_a_short_spin_is_set_unless_the_user_chose_a_policy():
    env: dict = {}
    assert prefer_short_spin(env) and env == {"GOMP_SPINCOUNT": SPIN_COUNT, "KMP_BLOCKTIME": "1"}
    for own in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}, {"KMP_BLOCKTIME": "200"}):
        env = dict(own)
        assert not prefer_short_spin(env) and env == own


def test_the_command_sets_it_before_torch_starts_its_threads():
    """``mip360`` sets the variables before torch (and its OpenMP) is imported, so they take effect."""
    code = ("import os, sys; from mip360cli import cli; cli.main(['--version']); "
            "print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME",
                                                                           "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().splitlines()[-1] == f"False {SPIN_COUNT}"
