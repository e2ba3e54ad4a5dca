"""Shared fixtures: small example scenes written by `mip360 example`'s own code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mip360cli.data.example import make_example

N_IMAGES, WIDTH, HEIGHT = 16, 32, 24
# A training of two tiny steps, a checkpoint each: for tests of the command line, not of the model.
TRAIN_FAST = ["--config", "tiny", "train.max_steps=2", "train.batch_rays=64", "train.val_every=0",
              "train.checkpoint_every=1"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``mip360 ARGV`` in this process: (exit code, stdout, stderr)."""
    from mip360cli.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def seeded_backbone(torch_home: Path, net: str = "alex") -> Path:
    """A torchvision backbone file (the architecture LPIPS uses, seeded weights) where torchvision looks for
    the downloaded one: LPIPS then loads for real without a network."""
    import torch

    from mip360cli.eval.lpips import WEIGHTS

    tv = pytest.importorskip("torchvision")
    torch.manual_seed(7)
    model = tv.models.alexnet(weights=None) if net == "alex" else tv.models.vgg16(weights=None)
    path = torch_home / "hub" / "checkpoints" / WEIGHTS[net]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session", autouse=True)
def offline_lpips(tmp_path_factory):
    """Every test (and the processes it starts) scores LPIPS with a seeded AlexNet, never downloading one."""
    import os

    home = tmp_path_factory.mktemp("torch_home")
    try:
        seeded_backbone(home)
    except pytest.skip.Exception:  # no torchvision: eval says LPIPS is not scored
        pass
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = old


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """The same example scene in all four formats (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("scenes")
    out = {}
    for fmt in ("colmap", "llff", "transforms", "easymocap"):
        make_example(root / fmt, fmt, N_IMAGES, WIDTH, HEIGHT)
        out[fmt] = root / fmt
    return out


@pytest.fixture
def scene_copy(scenes, tmp_path):
    """A writable copy of one format's scene: ``scene_copy('colmap')``."""

    def copy(fmt: str = "colmap") -> Path:
        dst = tmp_path / f"{fmt}-copy"
        shutil.copytree(scenes[fmt], dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def trained_example(tmp_path_factory) -> dict:
    """A tiny model trained well enough to have geometry: 24 views of 64x48, 600 steps (~30 s).

    For the tests of what is made from a trained run (export, viewer). Read-only.
    """
    from mip360cli.config import CacheConfig, DataConfig, load_config
    from mip360cli.data.cache import build_cache
    from mip360cli.train.loop import train

    root = tmp_path_factory.mktemp("trained")
    make_example(root / "scene", "colmap", 24, 64, 48)
    cache = build_cache(root / "scene", DataConfig(), CacheConfig(bucket_rays=4096), out=root / "cache.h5").path
    summary = train(cache, root / "run", load_config("tiny", ["train.max_steps=600", "train.val_every=0"]))
    return {"scene": root / "scene", "cache": cache, "run": root / "run", "val_psnr": summary.val_psnr}
