"""Opening a run someone else made never runs their code: checkpoints hold plain data and are read with
``weights_only=True``; an untrusted pickle is refused by render, eval and a resuming train."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mip360cli.config import CacheConfig, DataConfig, load_config
from mip360cli.data.cache import build_cache
from mip360cli.data.example import make_example
from mip360cli.core.errors import UserError
from mip360cli.runs import checkpoints as ckpt
from mip360cli.train.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(cache, run): 2 tiny steps on 8 views of 24x16."""
    root = tmp_path_factory.mktemp("trust")
    make_example(root / "scene", "colmap", 8, 24, 16)
    cache = build_cache(root / "scene", DataConfig(test_every=4), CacheConfig(bucket_rays=1024),
                        out=root / "cache.h5").path
    run = root / "run"
    train(cache, run, load_config("tiny", ["train.max_steps=2", "train.val_every=0", "train.batch_rays=64"]))
    return cache, run


class Payload:
    """Unpickling this creates a file: what a crafted checkpoint could do with any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _mip360(*args):
    return subprocess.run([sys.executable, "-m", "mip360cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(trained, tmp_path):
    cache, run = trained
    run = _copy_run(run, tmp_path / "run")
    marker = tmp_path / "pwned"
    step, last = ckpt.list_checkpoints(run)[-1]
    state = torch.load(last, weights_only=True)
    state["model"]["proposal.density.bias"] = Payload(marker)  # a crafted checkpoint
    torch.save(state, last)
    for args in (["render", run, "--frames", "1", "--no-video", "--device", "cpu"],
                 ["eval", run, "--device", "cpu"],
                 ["train", cache, "--run", run, "--config", "tiny", "train.max_steps=3", "train.batch_rays=64",
                  "train.val_every=0"]):
        r = _mip360(*args)
        assert r.returncode == 1, (args[0], r.stdout, r.stderr)
        assert "holds objects other than tensors and plain values" in r.stderr, r.stderr
        assert "open" in r.stderr and "mip360 checkpoint upgrade" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not marker.exists(), args[0]
    assert ckpt.list_checkpoints(run)[-1] == (step, last)  # the resume wrote nothing over it

    # `checkpoint upgrade` without --trust refuses too, and still runs nothing
    r = _mip360("checkpoint", "upgrade", last)
    assert r.returncode == 1 and "--trust" in r.stderr and not marker.exists(), r.stderr


def test_current_and_previous_version_checkpoints_load_with_weights_only(trained, tmp_path):
    from mip360cli.cli import main

    cache, run = trained
    run = _copy_run(run, tmp_path / "run")
    step, last = ckpt.list_checkpoints(run)[-1]
    state = torch.load(last, weights_only=True)  # the current version writes only plain data
    ckpt.check_plain(state)
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert main(["checkpoint", "upgrade", str(run)]) == 0  # nothing to convert: no --trust needed

    # As the previous version wrote it: the compile wrappers' keys and a non-fused Adam's param groups
    old = dict(state)
    old["model"] = {k.replace("nerf.", "nerf._orig_mod."): v for k, v in state["model"].items()}
    old["optimizer"] = {"state": state["optimizer"]["state"],
                        "param_groups": [{**g, "fused": None, "foreach": None}
                                         for g in state["optimizer"]["param_groups"]]}
    torch.save(old, last)
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    summary = train(cache, run, load_config("tiny", ["train.max_steps=3", "train.val_every=0",
                                                     "train.batch_rays=64"]))
    assert summary.resumed_from == 2 and summary.step == 3


def test_upgrade_converts_a_trusted_checkpoint_to_plain_data(trained, tmp_path):
    import numpy as np

    from mip360cli.cli import main

    cache, run = trained
    run = _copy_run(run, tmp_path / "run")
    step, last = ckpt.list_checkpoints(run)[-1]
    state = torch.load(last, weights_only=True)
    # what an older or foreign writer might hold: numpy values and paths
    state["nonfinite_total"] = np.int64(0)
    state["reader"] = {"epoch": np.int64(0), "bucket_index": 1, "offset": np.float64(3.0)}
    state["cache_path"] = Path("/somewhere/cache.h5")
    state["extra_array"] = np.zeros((2, 2), np.float32)
    torch.save(state, last)
    with pytest.raises(UserError, match="holds objects other than tensors"):
        ckpt.load_checkpoint(last)
    assert main(["checkpoint", "upgrade", str(run), "--trust"]) == 0
    fixed = ckpt.load_checkpoint(last)
    assert fixed["nonfinite_total"] == 0 and type(fixed["nonfinite_total"]) is int
    assert fixed["cache_path"] == "/somewhere/cache.h5"
    assert torch.equal(fixed["extra_array"], torch.zeros(2, 2))
    assert main(["eval", str(run), "--device", "cpu"]) == 0


def test_check_plain_names_the_first_object_that_is_not_plain():
    ckpt.check_plain({"a": [1, 2.0, "x", None, True, (3, 4)], "t": torch.zeros(2), "d": {0: {"k": 1}}})
    with pytest.raises(TypeError, match=r"state\['a'\]\[1\]\['b'\]: \w*Path is not a tensor"):
        ckpt.check_plain({"a": [0, {"b": Path("x")}]})
    with pytest.raises(TypeError, match="object is not"):  # refused before anything is written
        ckpt.save_checkpoint(Path("/nonexistent"), 1, {"x": object()}, 1)


def test_a_config_base_stays_in_its_folder_unless_said(tmp_path, monkeypatch, capsys):
    from mip360cli.runs.load import load_run

    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text("base: tiny\ntrain:\n  max_steps: 7\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "local.yaml").write_text("train:\n  seed: 3\n")
    (mine / "a.yaml").write_text("base: local.yaml\ntrain:\n  lr_init: 0.5\n")
    (mine / "b.yaml").write_text("base: ../shared/base.yaml\n")
    monkeypatch.chdir(tmp_path / "shared")  # a relative base is taken from the config's folder, not the cwd
    cfg = load_config(mine / "a.yaml")
    assert cfg.train.seed == 3 and cfg.train.lr_init == 0.5
    assert "outside" not in capsys.readouterr().err
    cfg = load_config(mine / "b.yaml")  # a file the user named: read, and said
    assert cfg.train.max_steps == 7 and cfg.model.nerf.width == 128  # its own base, the tiny preset
    err = capsys.readouterr().err
    assert "takes its base from" in err and "base.yaml" in err
    with pytest.raises(UserError, match="is outside"):
        load_config(mine / "b.yaml", outside_base="error")

    run = tmp_path / "run"  # a run's config.yaml (mip360 writes it without a base) cannot reach other files
    run.mkdir()
    (run / "config.yaml").write_text(f"base: {tmp_path / 'shared' / 'base.yaml'}\n")
    with pytest.raises(UserError, match="is outside"):
        load_run(run)
    with pytest.raises(UserError, match="neither a file"):
        (mine / "c.yaml").write_text("base: nothing-here.yaml\n")
        load_config(mine / "c.yaml")


def test_npy_files_are_read_without_pickles(tmp_path):
    import numpy as np

    from mip360cli.data.formats import llff

    bad = tmp_path / "poses_bounds.npy"
    np.save(bad, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="cannot read.*allow_pickle"):
        llff.read(tmp_path)
