import json
import shutil

import cv2
import numpy as np
import pytest

from mip360cli.config import DataConfig
from mip360cli.data.example import make_example, ring_cameras
from mip360cli.data.formats import colmap, detect_format, read_cameras
from mip360cli.data.scene import load_scene
from mip360cli.core.errors import UserError

from conftest import HEIGHT, N_IMAGES, WIDTH

FORMATS = ("colmap", "llff", "transforms", "easymocap")


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_reader_recovers_the_written_cameras(scenes, fmt):
    assert detect_format(scenes[fmt]) == fmt
    name, cams, files = read_cameras(scenes[fmt])
    ref = ring_cameras(N_IMAGES, WIDTH, HEIGHT)
    assert name == fmt and len(cams) == N_IMAGES and files
    np.testing.assert_allclose(cams.c2w, ref.c2w, atol=1e-9)
    np.testing.assert_allclose(cams.K, ref.K, atol=1e-9)
    assert (cams.width == WIDTH).all() and (cams.height == HEIGHT).all()
    assert all(p.exists() for p in cams.image_paths)


def test_all_formats_give_the_same_normalized_cameras(scenes):
    loaded = {fmt: load_scene(scenes[fmt], DataConfig()) for fmt in FORMATS}
    ref = loaded["colmap"]
    for fmt, s in loaded.items():
        np.testing.assert_allclose(s.cameras.c2w, ref.cameras.c2w, atol=1e-9, err_msg=fmt)
        np.testing.assert_allclose(s.cameras.K, ref.cameras.K, atol=1e-9, err_msg=fmt)
        np.testing.assert_allclose(s.transform, ref.transform, atol=1e-9, err_msg=fmt)
        assert s.train.tolist() == ref.train.tolist() and s.test.tolist() == [0, 8]
        # the same pixels behind each camera
        for i in (0, 5):
            a = cv2.imread(str(s.cameras.image_paths[i]))
            b = cv2.imread(str(ref.cameras.image_paths[i]))
            assert np.array_equal(a, b), fmt


def test_colmap_text_equals_binary(tmp_path):
    make_example(tmp_path / "bin", "colmap", 6, 16, 12, distortion=0.05)
    make_example(tmp_path / "txt", "colmap", 6, 16, 12, distortion=0.05, colmap_binary=False)
    assert (tmp_path / "txt/sparse/0/images.txt").exists()
    a, b = read_cameras(tmp_path / "bin")[1], read_cameras(tmp_path / "txt")[1]
    for key in ("K", "c2w", "dist"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), atol=1e-12)
    assert a.dist[0, 0] == 0.05 and a.dist[0, 1] == 0.0125  # OPENCV model keeps k1, k2


@pytest.mark.parametrize("line, K, dist", [
    ("1 SIMPLE_PINHOLE 16 12 10 8 6", [[10, 0, 8], [0, 10, 6]], [0, 0, 0, 0, 0]),
    ("1 PINHOLE 16 12 10 11 8 6", [[10, 0, 8], [0, 11, 6]], [0, 0, 0, 0, 0]),
    ("1 SIMPLE_RADIAL 16 12 10 8 6 0.1", [[10, 0, 8], [0, 10, 6]], [0.1, 0, 0, 0, 0]),
    ("1 RADIAL 16 12 10 8 6 0.1 0.2", [[10, 0, 8], [0, 10, 6]], [0.1, 0.2, 0, 0, 0]),
    ("1 OPENCV 16 12 10 11 8 6 0.1 0.2 0.01 0.02", [[10, 0, 8], [0, 11, 6]], [0.1, 0.2, 0.01, 0.02, 0]),
])
def test_colmap_camera_models(tmp_path, line, K, dist):
    d = tmp_path / "sparse" / "0"
    d.mkdir(parents=True)
    (d / "cameras.txt").write_text("# comment\n" + line + "\n")
    # identity rotation, camera at (0, 0, -2): tvec = -R c = (0, 0, 2)
    (d / "images.txt").write_text("# c\n1 1 0 0 0 0 0 2 1 a.png\n\n")
    cams = colmap.read(tmp_path)
    np.testing.assert_allclose(cams.K[0, :2], K)
    np.testing.assert_allclose(cams.dist[0], dist)
    np.testing.assert_allclose(cams.c2w[0], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -2]])


def test_colmap_unsupported_model(tmp_path):
    d = tmp_path / "sparse" / "0"
    d.mkdir(parents=True)
    (d / "cameras.txt").write_text("1 OPENCV_FISHEYE 16 12 10 11 8 6 0.1 0.2 0.01 0.02\n")
    (d / "images.txt").write_text("1 1 0 0 0 0 0 2 1 a.png\n\n")
    with pytest.raises(UserError, match="cameras.txt: camera 1 uses the COLMAP model OPENCV_FISHEYE") as e:
        colmap.read(tmp_path)
    assert "image_undistorter" in str(e.value)


def test_colmap_truncated_binary(scene_copy):
    root = scene_copy("colmap")
    p = root / "sparse/0/images.bin"
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(UserError, match="images.bin: file ends"):
        colmap.read(root)


def test_llff_uses_downscaled_folder(scene_copy):
    root = scene_copy("llff")
    (root / "images_2").mkdir()
    for p in sorted((root / "images").iterdir()):
        img = cv2.imread(str(p))
        cv2.imwrite(str(root / "images_2" / p.name), cv2.resize(img, (WIDTH // 2, HEIGHT // 2),
                                                                 interpolation=cv2.INTER_AREA))
    s = load_scene(root, DataConfig(ratio=0.5))
    assert s.cameras.image_paths[0].parent.name == "images_2"
    assert (s.cameras.width[0], s.cameras.height[0]) == (WIDTH // 2, HEIGHT // 2)
    full = load_scene(root, DataConfig())
    np.testing.assert_allclose(s.cameras.K[:, :2], full.cameras.K[:, :2] * 0.5)


def test_transforms_blender_style(scene_copy):
    root = scene_copy("transforms")
    meta = json.loads((root / "transforms.json").read_text())
    fx = meta["frames"][0]["fl_x"]
    blender = {"camera_angle_x": 2 * np.arctan(0.5 * WIDTH / fx), "frames": [
        {"file_path": "./" + fr["file_path"][:-4], "transform_matrix": fr["transform_matrix"]}  # no extension
        for fr in meta["frames"]]}
    (root / "transforms.json").write_text(json.dumps(blender))
    cams = read_cameras(root)[1]
    ref = ring_cameras(N_IMAGES, WIDTH, HEIGHT)
    np.testing.assert_allclose(cams.K, ref.K, atol=1e-9)
    np.testing.assert_allclose(cams.c2w, ref.c2w, atol=1e-9)
    assert cams.image_paths[0].suffix == ".png" and cams.image_paths[0].exists()


def test_easymocap_rodrigues_only_and_frame_choice(scene_copy):
    root = scene_copy("easymocap")
    text = (root / "extri.yml").read_text()
    # drop every Rot_ matrix: the reader falls back to the Rodrigues vectors R_
    kept, skip = [], False
    for line in text.splitlines():
        if line.startswith("Rot_"):
            skip = True
            continue
        if skip and line.startswith(("   ", "  ")):
            continue
        skip = False
        kept.append(line)
    (root / "extri.yml").write_text("\n".join(kept) + "\n")
    assert "Rot_" not in (root / "extri.yml").read_text()
    cams = read_cameras(root)[1]
    np.testing.assert_allclose(cams.c2w, ring_cameras(N_IMAGES, WIDTH, HEIGHT).c2w, atol=1e-9)
    # a second frame per camera: easymocap_frame picks it
    for cam in (root / "images").iterdir():
        shutil.copy(cam / "000000.png", cam / "000001.png")
    cams = read_cameras(root, easymocap_frame=1)[1]
    assert cams.image_paths[0].name == "000001.png"
    with pytest.raises(UserError, match="easymocap_frame=5"):
        read_cameras(root, easymocap_frame=5)


def test_frame_interval_and_ratio(scenes):
    s = load_scene(scenes["colmap"], DataConfig(frame_interval=2, ratio=0.5))
    assert len(s.cameras) == N_IMAGES // 2
    assert s.cameras.names[1] == "002.png"
    assert s.test.tolist() == [0] and len(s.train) == N_IMAGES // 2 - 1
    assert (s.cameras.width[0], s.cameras.height[0]) == (WIDTH // 2, HEIGHT // 2)
    assert s.cameras.K[0, 0, 0] == pytest.approx(0.8 * WIDTH * 0.5)


def test_example_depth_is_z_depth_of_the_scene(scenes):
    # For camera 0, pixel-center rays scaled by the stored depth land on scene surfaces:
    # rays hitting the floor must end at z = 0 (the example's world has +z up).
    from mip360cli.data.example import _camera_rays, trace

    cams = ring_cameras(N_IMAGES, WIDTH, HEIGHT)
    depth = np.load(scenes["colmap"] / "depth" / "000.npy")
    o, d = _camera_rays(cams, 0, (0.5, 0.5))
    p = o + depth.reshape(-1, 1) * d
    _, t = trace(o, d)
    np.testing.assert_allclose(depth.reshape(-1), t, rtol=1e-6)
    bottom = (np.arange(WIDTH * HEIGHT) // WIDTH) == HEIGHT - 1  # bottom row sees the floor
    np.testing.assert_allclose(p[bottom, 2], 0, atol=1e-5)


def test_example_is_deterministic(tmp_path):
    make_example(tmp_path / "a", "colmap", 4, 16, 12)
    make_example(tmp_path / "b", "colmap", 4, 16, 12)
    for name in ("images/001.png", "sparse/0/images.bin", "depth/002.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_example_scales_are_area_averages_with_their_own_cameras(tmp_path):
    """``mip360 example --scales 3``: each photo also at 1/2 and 1/4 size (the mean of 2x2 and 4x4 blocks), as
    ``d2/NAME`` and ``d4/NAME`` with scaled intrinsics; every size holds out the same cameras."""
    from mip360cli.config import DataConfig
    from mip360cli.data.cameras import split_indices
    from mip360cli.data.example import downscale
    from mip360cli.data.images import read_image
    from mip360cli.data.scene import load_scene

    make_example(tmp_path / "s", "colmap", 8, 32, 24, scales=3)
    scene = load_scene(tmp_path / "s", DataConfig())
    names = list(scene.cameras.names)
    assert names == [f"{p}{i:03d}.png" for p in ("", "d2/", "d4/") for i in range(8)]
    full, quarter = (read_image(tmp_path / "s/images" / n).astype(float) for n in ("003.png", "d4/003.png"))
    assert quarter.shape == (6, 8, 3)
    assert np.abs(quarter - full.reshape(6, 4, 8, 4, 3).mean((1, 3))).max() <= 0.5 + 1e-9
    assert downscale(np.arange(16, dtype=np.uint8).reshape(4, 4), 2).tolist() == [[2, 4], [10, 12]]
    K1, K4 = scene.cameras.K[3], scene.cameras.K[19]
    np.testing.assert_allclose(K4[:2], K1[:2] / 4)
    np.testing.assert_allclose(scene.cameras.c2w[3], scene.cameras.c2w[19])
    assert set(np.asarray(names)[scene.test]) == {"000.png", "d2/000.png", "d4/000.png"}
    assert split_indices(24, 8)[1].tolist() == [0, 8, 16]
    assert np.load(tmp_path / "s/depth/d2/003.npy").shape == (12, 16)
