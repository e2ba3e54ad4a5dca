"""Real captures: the user's cache is the cache, missing images, images_N, photos as cameras write them."""

from __future__ import annotations

import json
import os
import shutil
import struct

import cv2
import numpy as np
import pytest

from conftest import TRAIN_FAST, run_cli
from mip360cli.data.cache import RayCache
from mip360cli.data.example import make_example
from mip360cli.data.formats import colmap, llff, read_cameras
from mip360cli.data.images import image_size, read_image
from mip360cli.core.errors import UserError



run = run_cli


# ----------------------------------------------------------------------------- the user's cache is the cache


def test_train_uses_the_cache_preprocess_built(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    code, out, err = run(["preprocess", root, "--ratio", "0.5", "--test-every", "4"], capsys)
    assert code == 0, err
    assert "options    ratio 0.5, frame_interval 1, test_every 4" in out
    built = (root / "mip360_cache.h5").stat().st_mtime_ns
    # preprocess again without options: the cache stays as it is
    code, out, err = run(["preprocess", root], capsys)
    assert code == 0 and "(up to date)" in out and "ratio 0.5" in out
    # train with a preset that says ratio 1 and test_every 8: the cache's options win
    code, out, err = run(["train", root, "--run", tmp_path / "run", *TRAIN_FAST], capsys)
    assert code == 0, err
    assert "rebuilding" not in err
    assert "using the options mip360_cache.h5 was built with: data.ratio=0.5, data.test_every=4" in err
    assert (root / "mip360_cache.h5").stat().st_mtime_ns == built
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "ratio: 0.5" in cfg and "test_every: 4" in cfg
    cams = json.loads((tmp_path / "run" / "cameras.json").read_text())["cameras"]
    assert cams[0]["width"] == 16 and cams[0]["height"] == 12
    # an option given on the command line rebuilds, and says why
    code, out, err = run(["train", root, "--run", tmp_path / "run2", *TRAIN_FAST, "ratio=0.25"], capsys)
    assert code == 0, err
    assert "rebuilding" in err and "option ratio: 0.5 -> 0.25 (given on the command line)" in err
    with RayCache(root / "mip360_cache.h5") as c:
        assert c.options["ratio"] == 0.25 and c.options["test_every"] == 4


def test_touched_or_copied_images_neither_rebuild_nor_block_a_resume(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    run_dir = tmp_path / "run"
    assert run(["train", root, "--run", run_dir, *TRAIN_FAST], capsys)[0] == 0
    built = (root / "mip360_cache.h5").stat().st_mtime_ns
    for p in (root / "images").iterdir():  # touch
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 5 * 10**9))
    code, out, err = run(["train", root, "--run", run_dir, *TRAIN_FAST, "train.max_steps=3"], capsys)
    assert code == 0, err
    assert "rebuilding" not in err and "same content (checked by hash)" in err
    assert "resuming" in err and "from step 2" in err
    assert (root / "mip360_cache.h5").stat().st_mtime_ns == built
    # a copy without times (cp -r, rsync without -t), cache included: still the same data
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copy)
    code, out, err = run(["train", copy, "--run", run_dir, *TRAIN_FAST, "train.max_steps=4"], capsys)
    assert code == 0, err
    assert "rebuilding" not in err and "from step 3" in err


# ----------------------------------------------------------------------------- the Mip-NeRF 360 layout


def test_colmap_with_images_n_reads_the_downscaled_copies(tmp_path, capsys):
    root = tmp_path / "scene"
    make_example(root, "colmap", 9, 35, 27)  # odd sizes: images_2 is 17x13, a pixel off 35/2 rounded
    (root / "images_2").mkdir()
    for p in (root / "images").iterdir():
        small = cv2.resize(cv2.imread(str(p)), (17, 13), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / "images_2" / p.name), small)
    code, out, err = run(["preprocess", root, "--ratio", "0.5", "cache.bucket_rays=2048"], capsys)
    assert code == 0, err
    assert "images in images_2/" in out
    _, full, _ = read_cameras(root)
    with RayCache(root / "mip360_cache.h5") as c:
        assert set(c.cameras.width) == {17} and set(c.cameras.height) == {13}
        np.testing.assert_allclose(c.cameras.K[:, :2], full.K[:, :2] * 0.5)  # intrinsics scaled by exactly 1/N
        # held-out image 0 is images_2's pixels as they are, not resampled
        np.testing.assert_array_equal(c.test_image(0), read_image(root / "images_2" / c.cameras.names[c.test[0]]))
    # without images_4, ratio 0.25 resizes the full images
    code, out, err = run(["preprocess", root, "--ratio", "0.25", "cache.bucket_rays=2048"], capsys)
    assert code == 0 and "images in images/" in out


def test_two_formats_in_one_folder_must_be_chosen(scene_copy, capsys):
    root = scene_copy("colmap")
    _, cams, _ = read_cameras(root)
    llff.write(root, cams, np.ones((len(cams), 2)))  # the Mip-NeRF 360 dataset ships both
    code, out, err = run(["preprocess", root], capsys)
    assert code == 1
    assert "2 formats: colmap (sparse/0/cameras.bin, sparse/0/images.bin), llff (poses_bounds.npy)" in err
    assert "--format colmap" in err and "Traceback" not in err
    code, out, err = run(["preprocess", root, "--format", "colmap"], capsys)
    assert code == 0, err
    assert "format     colmap (sparse/0/cameras.bin, sparse/0/images.bin; images in images/)" in out
    # later commands take the format from the cache
    code, out, err = run(["preprocess", root], capsys)
    assert code == 0 and "(up to date)" in out


def test_colmap_text_model_without_points_lines(scene_copy):
    root = scene_copy("colmap")
    _, binary, _ = read_cameras(root)
    colmap.write(root, binary, binary=False)
    for ext in ("bin",):
        for name in ("cameras", "images", "points3D"):
            (root / "sparse" / "0" / f"{name}.{ext}").unlink()
    txt = root / "sparse" / "0" / "images.txt"
    lines = txt.read_text().splitlines()
    # COLMAP's own form: a POINTS2D line after each image, here with points in it
    with_points = [ln if ln.strip() else "10.5 20.5 -1 30.0 40.0 7" for ln in lines]
    txt.write_text("\n".join(with_points) + "\n")
    _, a, _ = read_cameras(root)
    # some tools leave the POINTS2D lines out entirely
    txt.write_text("\n".join(ln for ln in lines if ln.strip()) + "\n")
    _, b, _ = read_cameras(root)
    for cams in (a, b):
        assert cams.names == binary.names
        np.testing.assert_allclose(cams.c2w, binary.c2w, atol=1e-12)


# ----------------------------------------------------------------------------- photos as cameras write them


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    tiff = b"II*\0" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_opencv_does(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    img = (rng.random((12, 20, 3)) * 255).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    path = tmp_path / "photo.jpg"
    path.write_bytes(_with_exif_orientation(jpeg, orientation))
    upright = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # OpenCV turns it
    mine = read_image(path)
    np.testing.assert_array_equal(mine, upright)
    assert image_size(path) == (upright.shape[1], upright.shape[0])
    assert (upright.shape[:2] == (20, 12)) == (orientation >= 5)


def test_a_turned_phone_photo_goes_into_the_cache_upright(scene_copy, capsys):
    root = scene_copy("transforms")
    meta = json.loads((root / "transforms.json").read_text())
    frame = next(fr for fr in meta["frames"] if fr["file_path"] == "images/001.png")
    upright = read_image(root / "images" / "001.png")
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # a phone stores the sensor's rows, turned
    jpeg = cv2.imencode(".jpg", stored[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    (root / "images" / "001.jpg").write_bytes(_with_exif_orientation(jpeg, 6))  # 6: turn 90 degrees clockwise
    (root / "images" / "001.png").unlink()
    frame["file_path"] = "images/001.jpg"
    (root / "transforms.json").write_text(json.dumps(meta))
    code, out, err = run(["preprocess", root, "cache.bucket_rays=2048", "--test-every", "1000"], capsys)
    assert code == 0, err  # the size check sees the upright size the cameras describe
    with RayCache(root / "mip360_cache.h5") as c:
        j = list(c.cameras.names).index("images/001.jpg")
        cam, u, v, rgb = (np.concatenate(x) for x in zip(*(c.read_bucket(b) for b in range(c.n_buckets))))
        m = cam == j
        got = np.zeros_like(upright)
        got[v[m], u[m]] = rgb[m]
    # exactly the upright photo as OpenCV shows it (and close to the original, through JPEG's chroma loss)
    np.testing.assert_array_equal(got, cv2.imread(str(root / "images" / "001.jpg"))[:, :, ::-1])
    assert np.abs(got.astype(int) - upright).mean() < 8


def test_16_bit_float_and_alpha_images(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = (rng.random((6, 8, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), rgb16[:, :, ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), np.round(rgb16 / 257).astype(np.uint8))
    rgbf = rng.random((6, 8, 3)).astype(np.float32)
    rgbf[0, 0] = (1.5, -0.5, np.nan)  # out of range: clipped; NaN: black
    assert cv2.imwrite(str(tmp_path / "f.tiff"), rgbf[:, :, ::-1])
    got = read_image(tmp_path / "f.tiff")
    np.testing.assert_array_equal(got[1:], np.round(rgbf[1:] * 255).astype(np.uint8))
    np.testing.assert_array_equal(got[0, 0], (255, 0, 0))
    rgba = np.concatenate([(rng.random((6, 8, 3)) * 255), np.full((6, 8, 1), 255.0)], -1).astype(np.uint8)
    rgba[2, 3, 3] = 0  # one transparent pixel
    rgba[2, 4, 3] = 128
    cv2.imwrite(str(tmp_path / "t.png"), rgba[:, :, [2, 1, 0, 3]])
    white = read_image(tmp_path / "t.png")
    np.testing.assert_array_equal(white[2, 3], (255, 255, 255))
    a = 128 / 255
    np.testing.assert_array_equal(white[2, 4], np.round(rgba[2, 4, :3] / 255 * a * 255 + (1 - a) * 255))
    np.testing.assert_array_equal(white[0], rgba[0, :, :3])
    assert tuple(read_image(tmp_path / "t.png", (0.0, 0.0, 1.0))[2, 3]) == (0, 0, 255)
    with pytest.raises(UserError, match="t.png has transparent pixels"):
        read_image(tmp_path / "t.png", None)
    # an alpha channel that is opaque everywhere is no alpha at all
    rgba[:, :, 3] = 255
    cv2.imwrite(str(tmp_path / "o.png"), rgba[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(read_image(tmp_path / "o.png", None), rgba[:, :, :3])


def test_alpha_images_in_the_cache_follow_the_data_options(scene_copy, capsys):
    root = scene_copy("colmap")
    img = read_image(root / "images" / "000.png")  # image 0 is held out: stored whole in the cache
    alpha = np.full(img.shape[:2] + (1,), 255, np.uint8)
    alpha[:4, :4] = 0
    cv2.imwrite(str(root / "images" / "000.png"), np.concatenate([img[:, :, ::-1], alpha], -1))
    code, out, err = run(["preprocess", root, "cache.bucket_rays=2048", "data.alpha_background=[0,0,0]"], capsys)
    assert code == 0, err
    with RayCache(root / "mip360_cache.h5") as c:
        test0 = c.test_image(0)
    assert (test0[:4, :4] == 0).all() and (test0[4:] == img[4:]).all()
    code, out, err = run(["preprocess", root, "data.alpha=error"], capsys)
    assert code == 1 and "000.png has transparent pixels" in err and "data.alpha=composite" in err
    # a changed background is a changed cache
    code, out, err = run(["preprocess", root, "cache.bucket_rays=2048", "data.alpha_background=[1,1,1]"], capsys)
    assert code == 0 and "option alpha_background" in err


def test_eval_after_the_cache_was_rebuilt_with_another_split_scores_the_right_photos(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    run_dir = tmp_path / "run"
    assert run(["train", root, "--run", run_dir, *TRAIN_FAST], capsys)[0] == 0
    assert run(["eval", run_dir], capsys)[0] == 0
    before = json.loads((run_dir / "eval" / "metrics.json").read_text())
    # the cache is rebuilt with every 4th image held out: its stored held-out images are other views now
    code, out, err = run(["preprocess", root, "--test-every", "4"], capsys)
    assert code == 0 and "(built)" in out
    code, out, err = run(["eval", run_dir], capsys)
    assert code == 0, err
    assert "rebuilt after this checkpoint was trained" in err
    after = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert [r["name"] for r in after["per_image"]] == [r["name"] for r in before["per_image"]]
    for a, b in zip(after["per_image"], before["per_image"]):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-6)  # the same photos, read from disk
