"""SIGKILL at random moments, then the same command again: the result equals an uninterrupted run's.

One seeded kill point per stage in CI; ``MIP360_KILL_POINTS=N`` tries N points each.
Also a full disk, on a small tmpfs where this machine lets us mount one.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mip360cli.data.example import make_example

POINTS = int(os.environ.get("MIP360_KILL_POINTS", "1"))
TRAIN = ["--config", "tiny", "train.max_steps=16", "train.batch_rays=128", "train.val_every=0",
         "train.checkpoint_every=4", "--device", "cpu"]


def mip360(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mip360cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def killed_after(seconds: float, *args) -> bool:
    """Start ``mip360 ARGS``, SIGKILL it after ``seconds``; True if it was still running then."""
    p = subprocess.Popen([sys.executable, "-m", "mip360cli", *map(str, args)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        p.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "partial" in p.name]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill") / "scene"
    make_example(root, "colmap", 24, 64, 48)
    return root


def _cache_arrays(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f["rays"][k][:] for k in f["rays"]}
        out["fingerprint"] = f.attrs["fingerprint"]
        out["test0"] = f["test/images/00000"][:]
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("point", range(POINTS))
def test_killed_preprocess_then_rerun_equals_an_uninterrupted_one(scene, tmp_path, point):
    ref, data = shutil.copytree(scene, tmp_path / "ref"), shutil.copytree(scene, tmp_path / "data")
    args = ["cache.bucket_rays=4096", "cache.memory_mb=16", "--workers", "1"]  # several spilled runs
    assert mip360("preprocess", ref, *args).returncode == 0
    delay = random.Random(100 + point).uniform(0.3, 2.5)
    killed_after(delay, "preprocess", data, *args)
    r = mip360("preprocess", data, *args)
    assert r.returncode == 0, r.stderr
    assert not no_temp_files(data)
    _same(_cache_arrays(data / "mip360_cache.h5"), _cache_arrays(ref / "mip360_cache.h5"))


def _params(run: Path) -> dict:
    last = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, map_location="cpu", weights_only=False)["model"]


@pytest.mark.parametrize("point", range(POINTS))
def test_killed_training_then_rerun_equals_an_uninterrupted_one(scene, tmp_path, point):
    data = shutil.copytree(scene, tmp_path / "data")
    assert mip360("preprocess", data, "cache.bucket_rays=4096").returncode == 0
    assert mip360("train", data, "--run", tmp_path / "ref", *TRAIN).returncode == 0
    delay = random.Random(200 + point).uniform(2.5, 5.0)
    was_running = killed_after(delay, "train", data, "--run", tmp_path / "run", *TRAIN)
    r = mip360("train", data, "--run", tmp_path / "run", *TRAIN)
    assert r.returncode == 0, r.stderr
    assert not no_temp_files(tmp_path / "run")
    ref, got = _params(tmp_path / "ref"), _params(tmp_path / "run")
    for k in ref:
        assert torch.equal(ref[k], got[k]), (k, delay, was_running)


@pytest.mark.parametrize("point", range(POINTS))
def test_killed_render_then_rerun_equals_an_uninterrupted_one(scene, tmp_path, point):
    data = shutil.copytree(scene, tmp_path / "data")
    assert mip360("train", data, "--run", tmp_path / "run", *TRAIN, "train.max_steps=4").returncode == 0
    args = ["--frames", "6", "--device", "cpu"]
    assert mip360("render", tmp_path / "run", *args, "--out", tmp_path / "ref").returncode == 0
    delay = random.Random(300 + point).uniform(2.5, 4.5)
    killed_after(delay, "render", tmp_path / "run", *args, "--out", tmp_path / "out")
    r = mip360("render", tmp_path / "run", *args, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert not no_temp_files(tmp_path / "out")
    for sub in ("rgb", "depth"):
        names = sorted(p.name for p in (tmp_path / "ref" / sub).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "out" / sub).iterdir())
        for n in names:
            assert (tmp_path / "ref" / sub / n).read_bytes() == (tmp_path / "out" / sub / n).read_bytes(), n


# ----------------------------------------------------------------------------- a real full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, where the machine lets us mount one (root on Linux); else the test is skipped."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip()[:80]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_is_one_clear_message_and_leaves_nothing(scene, tmp_path, small_disk):
    data = shutil.copytree(scene, tmp_path / "data")
    r = mip360("preprocess", data, "--out", small_disk / "cache.h5")  # ~0.4 MB of rays: does not fit
    assert r.returncode == 1 and "needs about" in r.stderr and "MiB free" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "internal" not in r.stderr
    assert [p.name for p in small_disk.iterdir() if not p.name.endswith(".lock")] == []
    # a run folder on the full disk: the first checkpoint does not fit
    assert mip360("preprocess", data).returncode == 0
    r = mip360("train", data, "--run", small_disk / "run", *TRAIN)
    assert r.returncode == 1 and "the disk is full" in r.stderr and "step_" in r.stderr, r.stderr
    assert "internal" not in r.stderr and not no_temp_files(small_disk)
    # a render onto a disk with a few KiB left: the first frame does not fit
    assert mip360("train", data, "--run", tmp_path / "run", *TRAIN, "train.max_steps=1").returncode == 0
    shutil.rmtree(small_disk / "run")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 4096))
    r = mip360("render", tmp_path / "run", "--frames", "2", "--out", small_disk / "frames", "--device", "cpu")
    assert r.returncode == 1 and "the disk is full" in r.stderr and "internal" not in r.stderr, r.stderr
    assert not no_temp_files(small_disk)
