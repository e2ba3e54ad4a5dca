"""mip360 export: the points lie on the example scene's true surfaces, in the input data's coordinates."""

import numpy as np

from conftest import run_cli
from mip360cli.data.example import surface_distance
from mip360cli.data.formats import read_cameras
from mip360cli.export.points import project, read_ply, unproject, write_ply


def _xyz(ply: dict) -> np.ndarray:
    return np.stack([ply["x"], ply["y"], ply["z"]], 1).astype(np.float64)


def test_exported_points_lie_on_the_true_surfaces_in_input_coordinates(trained_example, tmp_path, capsys):
    run, scene = trained_example["run"], trained_example["scene"]
    out = tmp_path / "points.ply"
    code, stdout, err = run_cli(["export", run, "--out", out, "--points", "20000", "--normals", "--device", "cpu"],
                                capsys)
    assert code == 0, err
    assert "the input world" in stdout
    ply = read_ply(out)
    assert set(ply) == {"x", "y", "z", "nx", "ny", "nz", "red", "green", "blue"}
    xyz = _xyz(ply)
    assert 5000 <= len(xyz) <= 20000
    radius = 3.12  # the camera ring: |coordinate| of the farthest camera center, the normalized unit
    d = surface_distance(xyz)
    print(f"\nexport: {len(xyz)} points, median distance to the true surfaces {np.median(d):.4f} "
          f"({np.median(d) / radius:.2%} of the scene radius), 90th percentile {np.percentile(d, 90):.3f}")
    assert np.median(d) < 0.01 * radius

    # In the input world: points seen by the dataset's own camera 0 (read from its COLMAP files) have the
    # depth of the example's true depth map there.
    _, cams, _ = read_cameras(scene, "colmap")
    u, v, z = project(xyz, cams.K[0], cams.c2w[0])
    true_depth = np.load(scene / "depth" / "000.npy")
    h, w = true_depth.shape
    seen = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ui, vi = u[seen].astype(int), v[seen].astype(int)
    front = np.abs(true_depth[vi, ui] - z[seen]) < 0.05 * z[seen]  # the visible ones (others are occluded)
    assert seen.sum() > 1000 and front.mean() > 0.3, (seen.sum(), front.mean())

    # Normals: unit length; on the floor (z ~ 0, away from the spheres) they point up
    n = np.stack([ply["nx"], ply["ny"], ply["nz"]], 1)
    assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=1e-3)
    floor = (np.abs(xyz[:, 2]) < 0.02) & (np.hypot(xyz[:, 0], xyz[:, 1]) > 1.5)
    assert floor.sum() > 100 and np.median(n[floor, 2]) > 0.9

    # --normalized: the same scene in the run's normalized frame (there, not on the input surfaces)
    out_n = tmp_path / "normalized.ply"
    code, _, err = run_cli(["export", run, "--out", out_n, "--points", "20000", "--normalized", "--device", "cpu"],
                           capsys)
    assert code == 0, err
    xyz_n = _xyz(read_ply(out_n))
    assert np.abs(xyz_n).max() <= 1.0 + 1e-5  # --bound 1: the cameras' box
    transform = np.array(__import__("json").loads((run / "cameras.json").read_text())
                         ["transform_input_to_normalized"])
    back = (xyz_n - transform[:3, 3]) @ np.linalg.inv(transform[:3, :3]).T
    assert np.median(surface_distance(back)) < 0.01 * radius
    assert np.median(surface_distance(xyz_n)) > 0.05  # the frames differ: the test can tell them apart


def test_export_refuses_what_it_cannot_do(trained_example, tmp_path, capsys):
    run = trained_example["run"]
    code, _, err = run_cli(["export", run, "--split", "nope"], capsys)
    assert code == 1 and "--split" in err
    code, _, err = run_cli(["export", run, "--points", "0", "--device", "cpu"], capsys)
    assert code == 1 and "--points must be >= 1" in err
    code, _, err = run_cli(["export", run, "--min-opacity", "1.0", "--tolerance", "1e-9", "--device", "cpu",
                            "--out", tmp_path / "none.ply"], capsys)
    assert code == 1 and "no point passed the filters" in err
    assert not (tmp_path / "none.ply").exists()


def test_unproject_and_project_are_inverse_and_ply_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    K = np.array([[30.0, 0.5, 16], [0, 28, 12], [0, 0, 1]])
    R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R *= np.sign(np.linalg.det(R))
    c2w = np.concatenate([R, rng.normal(size=(3, 1))], 1)
    depth = rng.uniform(1, 5, size=(24, 32))
    pts = unproject(depth, K, c2w)
    u, v, z = project(pts.reshape(-1, 3), K, c2w)
    uu, vv = np.meshgrid(np.arange(32) + 0.5, np.arange(24) + 0.5)
    np.testing.assert_allclose(u, uu.ravel(), atol=1e-9)
    np.testing.assert_allclose(v, vv.ravel(), atol=1e-9)
    np.testing.assert_allclose(z, depth.ravel(), atol=1e-9)
    xyz = rng.normal(size=(10, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(10, 3)).astype(np.uint8)
    write_ply(tmp_path / "a.ply", xyz, rgb)
    back = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(_xyz(back).astype(np.float32), xyz)
    np.testing.assert_array_equal(np.stack([back["red"], back["green"], back["blue"]], 1), rgb)
    assert (back["nx"] == 0).all()
