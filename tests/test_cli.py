import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from mip360cli.cli import main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_subcommand_and_version(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for cmd in ("example", "preprocess"):
        assert cmd in out
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("mip360 0.")


def test_console_script_runs(tmp_path):
    # the installed entry point, as a user runs it
    r = subprocess.run([sys.executable, "-m", "mip360cli", "preprocess", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--ratio" in r.stdout and "KEY=VALUE" in r.stdout


@pytest.mark.parametrize("fmt", ["colmap", "llff", "transforms", "easymocap"])
def test_example_then_preprocess(tmp_path, capsys, fmt):
    code, out, _ = run(["example", tmp_path / "s", "--format", fmt, "--images", 9, "--size", "24x16"], capsys)
    assert code == 0, out
    code, out, err = run(["preprocess", tmp_path / "s", "--workers", 2, "cache.bucket_rays=4096"], capsys)
    assert code == 0, err
    assert "(built)" in out and "7 train, 2 test" in out and "bytes/ray" in out
    assert "reading images: 9/9" in err  # plain progress lines when not on a terminal
    assert (tmp_path / "s" / "mip360_cache.config.yaml").exists()
    code, out, _ = run(["preprocess", tmp_path / "s", "cache.bucket_rays=4096"], capsys)
    assert code == 0 and "(up to date)" in out


def _fail(argv, capsys, *needles):
    code, out, err = run(argv, capsys)
    assert code != 0
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def colmap_scene(tmp_path, capsys):
    assert run(["example", tmp_path / "s", "--images", 9, "--size", "24x16"], capsys)[0] == 0
    return tmp_path / "s"


def test_missing_images_are_skipped_loudly(colmap_scene, capsys):
    # people delete blurry frames after pose estimation: the camera file still lists them
    for name in ("004.png", "006.png"):
        (colmap_scene / "images" / name).unlink()
    code, out, err = run(["preprocess", colmap_scene], capsys)
    assert code == 0, err
    assert "2 of the 9 frames in images.bin have no image file" in err and "004.png, 006.png" in err
    assert "images     7 (6 train, 1 test)" in out
    _fail(["preprocess", colmap_scene, "data.missing_images=error"], capsys, "004.png, 006.png",
          "data.missing_images=skip")
    for p in (colmap_scene / "images").iterdir():
        p.unlink()
    _fail(["preprocess", colmap_scene], capsys, "none of the 9 frames", "has its image file")


def test_missing_images_in_transforms_json_without_sizes(scene_copy, capsys):
    root = scene_copy("transforms")
    meta = json.loads((root / "transforms.json").read_text())
    for fr in meta["frames"]:
        del fr["w"], fr["h"]  # sizes must then come from the images, which a missing one cannot give
    (root / "transforms.json").write_text(json.dumps(meta))
    (root / "images" / "001.png").unlink()
    code, out, err = run(["preprocess", root], capsys)
    assert code == 0, err
    assert "1 of the 16 frames in transforms.json have no image file" in err and "images/001.png" in err
    assert "images     15 " in out


def test_image_size_mismatch(colmap_scene, capsys):
    import cv2

    cv2.imwrite(str(colmap_scene / "images" / "002.png"), np.zeros((10, 10, 3), np.uint8))
    _fail(["preprocess", colmap_scene], capsys, "002.png is 10x10 but cameras.bin says 24x16")


def test_unsupported_colmap_model(colmap_scene, capsys):
    p = colmap_scene / "sparse/0/cameras.bin"
    data = bytearray(p.read_bytes())
    struct.pack_into("<i", data, 12, 5)  # first camera's model id -> OPENCV_FISHEYE (8 params, was 3)
    p.write_bytes(bytes(data))
    _fail(["preprocess", colmap_scene], capsys, "error:", "cameras.bin")


def test_unsupported_colmap_model_text(tmp_path, capsys):
    run(["example", tmp_path / "t", "--images", 9, "--size", "24x16", "--text"], capsys)
    p = tmp_path / "t/sparse/0/cameras.txt"
    p.write_text(p.read_text().replace("SIMPLE_PINHOLE 24 16 19.200000000000003 12.0 8.0",
                                       "FOV 24 16 19.2 19.2 12.0 8.0 0.1"))
    _fail(["preprocess", tmp_path / "t"], capsys, "uses the COLMAP model FOV", "image_undistorter")


def test_malformed_yaml_names_the_line(colmap_scene, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  ratio: 0.5\n cache: [\n")
    _fail(["preprocess", colmap_scene, "--config", bad], capsys, "bad.yaml:3:", "malformed YAML")


def test_unknown_override_suggests(colmap_scene, capsys):
    _fail(["preprocess", colmap_scene, "data.ration=0.5"], capsys, "unknown key 'data.ration'",
          "did you mean 'data.ratio'")


def test_nan_pose(tmp_path, capsys):
    run(["example", tmp_path / "s", "--images", 9, "--size", "24x16", "--format", "transforms"], capsys)
    p = tmp_path / "s/transforms.json"
    meta = json.loads(p.read_text())
    meta["frames"][3]["transform_matrix"][0][3] = float("nan")
    p.write_text(json.dumps(meta))
    _fail(["preprocess", tmp_path / "s"], capsys, "transforms.json: the pose of image 'images/003.png' has NaN")


def test_non_rotation_pose(tmp_path, capsys):
    run(["example", tmp_path / "s", "--images", 9, "--size", "24x16", "--format", "transforms"], capsys)
    p = tmp_path / "s/transforms.json"
    meta = json.loads(p.read_text())
    meta["frames"][2]["transform_matrix"][0][0] *= 3
    p.write_text(json.dumps(meta))
    _fail(["preprocess", tmp_path / "s"], capsys, "'images/002.png' is not a rotation")


def test_empty_and_missing_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fail(["preprocess", tmp_path / "empty"], capsys, "is empty", "mip360 example")
    _fail(["preprocess", tmp_path / "nope"], capsys, "does not exist")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    _fail(["preprocess", tmp_path / "junk"], capsys, "no camera file found", "poses_bounds.npy")


def test_unknown_format(colmap_scene, capsys):
    _fail(["preprocess", colmap_scene, "--format", "blender"], capsys, "must be one of 'auto', 'colmap'")
    _fail(["preprocess", colmap_scene, "--format", "llff"], capsys, "does not hold llff data")


def test_output_not_writable(colmap_scene, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _fail(["preprocess", colmap_scene, "--out", blocker / "cache.h5"], capsys, "cannot create output folder")


def test_disk_full(colmap_scene, capsys, monkeypatch):
    import errno

    from mip360cli.data.cache import shuffle

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shuffle.BucketBlocks, "bucket", full)
    _fail(["preprocess", colmap_scene], capsys, "disk is full", "--out")
    # no cache and no temporary file; the lock file stays (removing it on release would race a second process)
    assert not [p for p in colmap_scene.iterdir() if "cache" in p.name and p.suffix != ".lock"]


def test_debug_shows_the_traceback(colmap_scene, capsys):
    from mip360cli.core.errors import UserError

    with pytest.raises(UserError):
        main(["preprocess", str(colmap_scene), "--debug", "data.ration=1"])


def test_bad_example_options(tmp_path, capsys):
    _fail(["example", tmp_path / "x", "--size", "3x3"], capsys, "--size")
    _fail(["example", tmp_path / "x", "--format", "nope"], capsys, "unknown format 'nope'")
    _fail(["example", tmp_path / "x", "--format", "llff", "--distortion", "0.1"], capsys, "LLFF cannot store")


def test_usage_errors_exit_2(capsys):
    code, out, err = run(["preprocess", "--bogus"], capsys)
    assert code == 2 and "--bogus" in (out + err)


def test_poses_help_shows_the_install_command_whole():
    r = subprocess.run([sys.executable, "-m", "mip360cli", "poses", "--help"], capture_output=True, text=True,
                       env={**__import__("os").environ, "COLUMNS": "120"})
    assert r.returncode == 0 and 'pip install "mip360cli[poses]"' in r.stdout  # not eaten as rich markup
