"""What mip360 writes and reads back, tried as a hostile or unlucky user would (issue 17).

mip360 never deletes or overwrites a file it did not write; every file it reads (its own caches,
checkpoints and run files too) is bounded and checked; command-line values are range-checked
before work starts. Each case ends in one clear message and a non-zero exit, or the right result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import TRAIN_FAST, run_cli
from mip360cli.core.files import process_lock

run = run_cli


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- never delete what it did not write


def test_render_into_a_folder_of_the_users_files_deletes_nothing(trained_example, tmp_path, capsys):
    out = tmp_path / "holiday"
    (out / "rgb").mkdir(parents=True)
    (out / "holiday.mp4").write_bytes(b"the user's video")
    (out / "rgb" / "family.png").write_bytes(b"the user's photo")
    before = _snapshot(out)
    for extra in ([], ["--overwrite"]):
        code, _, err = run(["render", trained_example["run"], "--frames", "2", "--out", out, "--device", "cpu",
                            *extra], capsys)
        assert code == 1 and "holds 2 file(s) mip360 did not write (holiday.mp4, rgb/family.png)" in err, err
        assert "Traceback" not in err and _snapshot(out) == before


def test_a_render_folder_keeps_only_mips_files_and_cleans_what_a_killed_render_left(trained_example, tmp_path,
                                                                                       capsys):
    out = tmp_path / "r"
    args = ["render", trained_example["run"], "--frames", "2", "--out", out, "--device", "cpu", "--no-video"]
    assert run(args, capsys)[0] == 0
    leftover = out / "rgb" / ".00001.png.k1ll3dxx.partial"  # a write killed halfway
    leftover.write_bytes(b"half a frame")
    (out / "rgb" / "00001.png").unlink()
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert not leftover.exists() and (out / "rgb" / "00001.png").exists()
    (out / "notes.txt").write_text("the user's notes, added later")
    code, _, err = run(args + ["--overwrite"], capsys)
    assert code == 1 and "notes.txt" in err and (out / "notes.txt").exists()


def test_two_renders_into_one_folder_the_second_is_refused(trained_example, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["render", trained_example["run"], "--frames", "2", "--out", out, "--device", "cpu", "--no-video"]
    assert run(args, capsys)[0] == 0
    with process_lock(out / ".render.lock", "a render"):  # another render holds the folder
        code, _, err = run(args + ["--overwrite"], capsys)
    assert code == 1 and "another mip360 process is using the render folder" in err and "pid" in err


def test_train_into_a_folder_of_the_users_files_is_refused(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "draft.tex").write_text("\\section{}")
    before = _snapshot(mine)
    code, _, err = run(["train", root, "--run", mine, *TRAIN_FAST], capsys)
    assert code == 1 and "not a mip360 run folder" in err and "draft.tex" in err, err
    assert _snapshot(mine) == before
    only_config = tmp_path / "other"
    only_config.mkdir()
    (only_config / "config.yaml").write_text("my: own config\n")
    code, _, err = run(["train", root, "--run", only_config, *TRAIN_FAST], capsys)
    assert code == 1 and "config.yaml" in err and (only_config / "config.yaml").read_text() == "my: own config\n"
    # a run of mip360 with the user's notes in it trains (and leaves the notes alone)
    run_dir = tmp_path / "run"
    assert run(["train", root, "--run", run_dir, *TRAIN_FAST], capsys)[0] == 0
    (run_dir / "notes.txt").write_text("lr too high?")
    code, _, err = run(["train", root, "--run", run_dir, *TRAIN_FAST, "train.max_steps=3"], capsys)
    assert code == 0, err
    assert (run_dir / "notes.txt").read_text() == "lr too high?"


def test_export_never_replaces_a_file_it_did_not_write(trained_example, tmp_path, capsys):
    base = ["export", trained_example["run"], "--device", "cpu", "--points", "500"]
    theirs = tmp_path / "scan.ply"
    theirs.write_bytes(b"ply\nformat ascii 1.0\ncomment from a laser scanner\n")
    code, _, err = run(base + ["--out", theirs], capsys)
    assert code == 1 and "scan.ply" in err and theirs.read_bytes().startswith(b"ply\nformat ascii")
    code, _, err = run(base + ["--out", tmp_path], capsys)
    assert code == 1 and "is a folder" in err
    ours = tmp_path / "points.ply"
    assert run(base + ["--out", ours], capsys)[0] == 0
    scratch = tmp_path / ".points.ply.views"
    scratch.mkdir()
    (scratch / "3.npz").write_bytes(b"left by a killed export")
    assert run(base + ["--out", ours], capsys)[0] == 0  # its own PLY is replaced, the leftover removed
    assert not scratch.exists()
    scratch.mkdir()
    (scratch / "keep.txt").write_text("someone's")
    code, _, err = run(base + ["--out", ours], capsys)
    assert code == 1 and "keep.txt" in err and (scratch / "keep.txt").exists()


def test_example_and_preprocess_do_not_write_over_the_users_files(scene_copy, tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "images" / "00000.png").write_bytes(b"the user's photo")
    code, _, err = run(["example", photos], capsys)
    assert code == 1 and "images/00000.png" in err and (photos / "images" / "00000.png").read_bytes() == \
        b"the user's photo"
    again = tmp_path / "again"
    assert run(["example", again, "--size", "16x12", "--images", "4"], capsys)[0] == 0
    assert run(["example", again, "--size", "16x12", "--images", "4"], capsys)[0] == 0  # its own example
    root = scene_copy("colmap")
    table = root / "results.h5"
    table.write_bytes(b"not a cache: the user's data")
    code, _, err = run(["preprocess", root, "--out", table], capsys)
    assert code == 1 and "is not a mip360 ray cache" in err and table.read_bytes() == b"not a cache: the user's data"


def test_the_demo_does_not_write_over_a_folder_of_the_users(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "scene").mkdir(parents=True)
    (out / "scene" / "mine.jpg").write_bytes(b"jpeg")
    code, _, err = run(["demo", out, "--steps", "2", "--frames", "1"], capsys)
    assert code == 1 and "mine.jpg" in err and (out / "scene" / "mine.jpg").read_bytes() == b"jpeg"
    shutil.rmtree(out)
