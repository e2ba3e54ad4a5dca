"""Faults a clumsy or unlucky user meets: two processes, killed writes, full disks, bad values (issue 8)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TRAIN_FAST, run_cli
from mip360cli.cli import main



run = run_cli


def _hold_lock(lock: Path) -> subprocess.Popen:
    """Another process holding ``lock`` as a running mip360 would."""
    code = ("import sys, time; from mip360cli.core.files import process_lock\n"
            f"with process_lock({str(lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_two_trainings_on_one_run_folder_are_refused_and_a_killed_one_frees_it(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    run_dir = tmp_path / "run"
    holder = _hold_lock(run_dir / ".mip360.lock")
    try:
        code, out, err = run(["train", root, "--run", run_dir, *TRAIN_FAST], capsys)
        assert code == 1 and "another mip360 process is using the run folder" in err
        assert f"pid {holder.pid}" in err and not (run_dir / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # the OS releases the lock of a killed process
        holder.wait()
    code, out, err = run(["train", root, "--run", run_dir, *TRAIN_FAST], capsys)
    assert code == 0, err


def test_two_preprocesses_of_one_cache_are_refused(scene_copy, capsys):
    root = scene_copy("colmap")
    holder = _hold_lock(root / ".mip360_cache.h5.lock")
    try:
        code, out, err = run(["preprocess", root], capsys)
        assert code == 1 and "another mip360 process is using the ray cache" in err and "internal" not in err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run(["preprocess", root], capsys)[0] == 0


def test_a_partial_metrics_line_does_not_block_a_resume(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    run_dir = tmp_path / "run"
    assert run(["train", root, "--run", run_dir, *TRAIN_FAST, "train.log_every=1"], capsys)[0] == 0
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.1')  # a crash or a full disk in the middle of a line
    code, out, err = run(["train", root, "--run", run_dir, *TRAIN_FAST, "train.log_every=1", "train.max_steps=3"],
                         capsys)
    assert code == 0, err
    assert "dropped 1 incomplete line" in err and "from step 2" in err
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]


def test_temp_files_of_killed_runs_are_removed(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    run_dir = tmp_path / "run"
    assert run(["train", root, "--run", run_dir, *TRAIN_FAST], capsys)[0] == 0
    leftovers = [root / ".mip360_cache.h5.k1ll3d.partial", root / ".mip360_cache.h5.k1ll3d.partial.runs.partial",
                 run_dir / "checkpoints" / ".step_0000003.pt.k1ll3d.partial"]
    for p in leftovers:
        p.write_bytes(b"half written")
    # the cache is up to date: nothing is rebuilt, but what killed runs left is cleared
    code, out, err = run(["train", root, "--run", run_dir, *TRAIN_FAST, "train.max_steps=3"], capsys)
    assert code == 0, err
    assert not [p for p in leftovers if p.exists()]


def test_files_follow_the_umask_and_image_paths_are_absolute(scene_copy, tmp_path, capsys, monkeypatch):
    root = scene_copy("colmap")
    monkeypatch.chdir(root.parent)
    run_dir = tmp_path / "run"
    assert run(["train", root.name, "--run", run_dir, *TRAIN_FAST], capsys)[0] == 0  # a relative dataset path
    mask = os.umask(0)
    os.umask(mask)
    want = 0o666 & ~mask
    for p in (root / "mip360_cache.h5", run_dir / "config.yaml", run_dir / "cameras.json",
              *(run_dir / "checkpoints").iterdir()):
        assert stat.S_IMODE(p.stat().st_mode) == want, p  # not the 0600 of a temporary file
    cams = json.loads((run_dir / "cameras.json").read_text())["cameras"]
    assert all(Path(c["image_path"]).is_absolute() and Path(c["image_path"]).exists() for c in cams)
    monkeypatch.chdir(tmp_path)  # eval from elsewhere at another ratio reads the photos themselves
    assert run(["eval", run_dir, "--ratio", "0.5"], capsys)[0] == 0


def test_a_full_disk_while_writing_a_checkpoint_is_one_clear_message(scene_copy, tmp_path, capsys, monkeypatch):
    from mip360cli.runs import checkpoints as checkpoint

    root = scene_copy("colmap")

    def full(fd):  # the disk fills as the checkpoint reaches it (test_kill.py does it on a real small disk)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    code, out, err = run(["train", root, "--run", tmp_path / "run", *TRAIN_FAST], capsys)
    assert code == 1 and "the disk is full" in err and "step_0000001.pt" in err and "internal" not in err
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))


@pytest.mark.parametrize("argv, needle", [
    (["train", "{data}", "--run", "{tmp}/r", "model.nerf.width=0"], "model.nerf.width must be >= 1"),
    (["train", "{data}", "--run", "{tmp}/r", "model.prop.depth=-1"], "model.prop.depth must be >= 1"),
    (["eval", "{tmp}/r", "--ratio", "0"], "--ratio 0.0: must be in (0, 4]"),
])
def test_values_that_would_silently_change_the_result_are_refused(scene_copy, tmp_path, capsys, argv, needle):
    data = scene_copy("colmap")
    argv = [a.format(data=data, tmp=tmp_path) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 1 and needle in err, err


def test_duplicate_frames_are_refused(scene_copy, capsys):
    root = scene_copy("transforms")
    meta = json.loads((root / "transforms.json").read_text())
    meta["frames"].append(dict(meta["frames"][3]))
    (root / "transforms.json").write_text(json.dumps(meta))
    code, out, err = run(["preprocess", root], capsys)
    assert code == 1 and "listed more than once: images/003.png" in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from mip360cli.data.example import make_example

    root = tmp_path_factory.mktemp("faultrun")
    make_example(root / "scene", "colmap", 9, 24, 16)
    assert main(["train", str(root / "scene"), "--run", str(root / "run"), *TRAIN_FAST]) == 0
    return root / "run"


@pytest.mark.parametrize("frame, needle", [
    ({"c2w": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]]}, "is not a rotation"),
    ({"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]], "fov_deg": 180}, "between 0 and 180 degrees"),
    ({"c2w": [[1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]]}, "must be a matrix of numbers"),
    ({"c2w": [["a", 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]]}, "must be a matrix of numbers"),
    ({"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3]], "fov_deg": "wide"}, "must be a number"),
    ("frame", "must be an object with 'c2w'"),
])
def test_camera_paths_that_would_render_garbage_are_refused(tiny_run, tmp_path, capsys, frame, needle):
    path = tmp_path / "path.json"
    path.write_text(json.dumps({"width": 8, "height": 6, "frames": [frame]}))
    code, out, err = run(["render", tiny_run, "--path", path, "--no-video"], capsys)
    assert code == 1 and needle in err and "internal" not in err, err


def test_too_few_buckets_for_the_processes_is_one_message_and_its_hint_works(scene_copy, tmp_path, capsys):
    import re

    from mip360cli.data.cache import stored_info

    root = scene_copy("colmap")
    assert run(["preprocess", root], capsys)[0] == 0  # 1M-ray buckets: the whole scene is one bucket
    code, out, err = run(["train", root, "--gpus", "2", "--run", tmp_path / "r"], capsys)
    assert code == 1 and "has 1 bucket(s), fewer than the 2 processes" in err
    assert "Traceback" not in err and "torch.distributed" not in err  # stopped before any process started
    size = re.search(r"mip360 preprocess DATA cache.bucket_rays=(\d+)", err).group(1)
    assert run(["preprocess", root, f"cache.bucket_rays={size}"], capsys)[0] == 0
    assert stored_info(root / "mip360_cache.h5")["n_buckets"] >= 2
    # training keeps the buckets preprocess made (the tiny preset's own bucket_rays does not rebuild it)
    code, out, err = run(["train", root, "--run", tmp_path / "r", *TRAIN_FAST], capsys)
    assert code == 0 and "rebuilding" not in err
    assert stored_info(root / "mip360_cache.h5")["n_buckets"] >= 2


@pytest.mark.parametrize("argv, needle", [
    (["render", "{run}", "ratio=abc"], "'data.ratio' must be a number, got 'abc'"),
    (["render", "{run}", "render.chunk_rays=0"], "render.chunk_rays must be >= 1"),
    (["render", "{run}", "render.chunk=512"], "did you mean 'render.chunk_rays'"),
    (["render", "{run}", "vis_depth_map=maybe"], "vis_depth_map must be true or false"),
    (["eval", "{run}", "--ratio", "0.25"], "SSIM needs images of at least 11x11 pixels"),
    (["train", "{run}", "--config", "{tmp}"], "is a folder, not a YAML file"),
])
def test_malformed_options_name_what_is_wrong(tiny_run, tmp_path, capsys, argv, needle):
    argv = [a.format(run=tiny_run, tmp=tmp_path) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 1 and needle in err and "internal" not in err, err


def test_vis_depth_map_false_renders_no_depth(tiny_run, tmp_path, capsys):
    out = tmp_path / "nodepth"
    assert run(["render", tiny_run, "--frames", "2", "--out", out, "--no-video", "vis_depth_map=false"], capsys)[0] == 0
    assert (out / "rgb").is_dir() and not (out / "depth").exists()


def test_a_run_without_cameras_json_is_a_clear_error(tiny_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "cameras.json").unlink()
    code, out, err = run(["render", copy], capsys)
    assert code == 1 and "has no cameras.json" in err and "internal" not in err


def test_damaged_inputs_name_the_file_and_line(scene_copy, capsys):
    root = scene_copy("colmap")
    from mip360cli.data.formats import colmap, read_cameras

    _, cams, _ = read_cameras(root)
    colmap.write(root, cams, binary=False)
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (root / "sparse" / "0" / name).unlink()
    txt = root / "sparse" / "0" / "images.txt"
    lines = txt.read_text().splitlines()
    first = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    lines[first] = "x" + lines[first][1:]
    txt.write_text("\n".join(lines) + "\n")
    code, out, err = run(["preprocess", root], capsys)
    assert code == 1 and f"images.txt:{first + 1}: IMAGE_ID must be a whole number" in err
    # a zero-byte image
    root2 = scene_copy("llff")
    (root2 / "images" / "002.png").write_bytes(b"")
    code, out, err = run(["preprocess", root2], capsys)
    assert code == 1 and "002.png is empty (0 bytes)" in err and "internal" not in err


def test_bf16_on_the_cpu_is_said_to_be_ignored(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    code, out, err = run(["train", root, "--run", tmp_path / "r", *TRAIN_FAST, "train.precision=bf16",
                          "--device", "cpu"], capsys)
    assert code == 0 and "train.precision=bf16 is ignored on the CPU" in err
