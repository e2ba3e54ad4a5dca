"""mip360 export --mesh: TSDF fusion in blocks, marching cubes, floaters culled, files trimesh and the viewer read."""

from __future__ import annotations

import numpy as np
import trimesh

from conftest import run_cli
from mip360cli.data.example import ENCLOSURE_RADIUS, SPHERES, ring_cameras, render_view, surface_distance
from mip360cli.data.formats import read_cameras
from mip360cli.export.points import project

RADIUS = 3.12  # the camera ring: |coordinate| of the farthest camera center (as the point export's test)


def true_normals(points: np.ndarray) -> np.ndarray:
    """Outward normals (N, 3) of the example's nearest true surface (floor, enclosure or a sphere) at ``points``."""
    dist, normal = [np.abs(points[:, 2])], [np.tile([0.0, 0.0, 1.0], (len(points), 1))]
    r = np.linalg.norm(points, axis=1)
    dist.append(np.abs(ENCLOSURE_RADIUS - r))
    normal.append(-points / r[:, None])  # seen from inside: towards the centre
    for s in SPHERES:
        d = points - np.asarray(s.center)
        n = np.linalg.norm(d, axis=1)
        dist.append(np.abs(n - s.radius))
        normal.append(d / n[:, None])
    k = np.argmin(dist, axis=0)
    return np.stack(normal)[k, np.arange(len(points))]


def test_mesh_lies_on_the_true_surfaces_faces_outward_and_opens_in_trimesh(trained_example, tmp_path, capsys):
    run, scene = trained_example["run"], trained_example["scene"]
    out = tmp_path / "mesh.ply"
    code, stdout, err = run_cli(["export", run, "--mesh", "--resolution", "192", "--out", out, "--device", "cpu"],
                                capsys)
    assert code == 0, err
    assert "the input world" in stdout and "dropped as floaters" in err
    mesh = trimesh.load(out, process=False)
    assert isinstance(mesh, trimesh.Trimesh) and mesh.visual.kind == "vertex" and len(mesh.faces) > 2000
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert colors.std() > 10  # the scene's colours, not one fill
    d = surface_distance(np.asarray(mesh.vertices))
    print(f"\nmesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, median distance to the true surfaces "
          f"{np.median(d):.4f} ({np.median(d) / RADIUS:.2%} of the scene radius)")
    assert np.median(d) < 0.01 * RADIUS
    outward = (np.asarray(mesh.face_normals) * true_normals(np.asarray(mesh.triangles_center))).sum(1) > 0
    assert outward.mean() > 0.9, outward.mean()

    # In the input world: vertices seen by the dataset's own camera 0 (from its COLMAP files) have the example's
    # true depth there
    _, cams, _ = read_cameras(scene, "colmap")
    u, v, z = project(np.asarray(mesh.vertices), cams.K[0], cams.c2w[0])
    true_depth = np.load(scene / "depth" / "000.npy")
    h, w = true_depth.shape
    seen = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    front = np.abs(true_depth[v[seen].astype(int), u[seen].astype(int)] - z[seen]) < 0.05 * z[seen]
    assert seen.sum() > 300 and front.mean() > 0.3, (seen.sum(), front.mean())

    # GLB and OBJ through trimesh, with colours; --normalized is the run's frame; --components keeps the largest
    for fmt in ("glb", "obj"):
        code, _, err = run_cli(["export", run, "--mesh", "--resolution", "64", "--format", fmt, "--normalized",
                                "--components", "1", "--out", tmp_path / f"mesh.{fmt}", "--device", "cpu"], capsys)
        assert code == 0, err
        other = trimesh.load(tmp_path / f"mesh.{fmt}", force="mesh", process=False)
        assert len(other.faces) > 100 and other.visual.kind == "vertex"
        assert len(trimesh.graph.connected_components(other.face_adjacency, min_len=1)) == 1
        assert np.median(surface_distance(np.asarray(other.vertices))) > 0.05  # not the input frame
    # the viewer reads each file back into the run's normalized scene: the same place whichever frame
    from mip360cli.export.mesh import read_geometry
    from mip360cli.runs.load import load_run

    transform = load_run(run, device="cpu").transform
    a = read_geometry(out, transform)
    b = read_geometry(tmp_path / "mesh.glb", transform)
    assert a["faces"] is not None and a["colors"].shape == a["vertices"].shape
    assert np.abs(np.median(a["vertices"], 0) - np.median(b["vertices"], 0)).max() < 0.1
    # a file mip360 did not write is never replaced; a wrong suffix is refused
    (tmp_path / "theirs.obj").write_text("v 0 0 0\n")
    code, _, err = run_cli(["export", run, "--mesh", "--out", tmp_path / "theirs.obj", "--device", "cpu"], capsys)
    assert code == 1 and "mip360 overwrites only a mesh it wrote" in err
    assert (tmp_path / "theirs.obj").read_text() == "v 0 0 0\n"
    code, _, err = run_cli(["export", run, "--mesh", "--out", tmp_path / "m.obj", "--format", "glb"], capsys)
    assert code == 1 and "--format" in err


def _true_views(tmp_path, floater: bool):
    """The example's 12 ring views with their true z-depth (no model), one view with a floater: a patch of
    depth 40% short that no other view sees."""
    from mip360cli.export.points import Scratch
    from mip360cli.runs.views import View

    cams = ring_cameras(12, 48, 36)
    scratch = Scratch(tmp_path / f"scratch{int(floater)}")
    views = []
    for i in range(len(cams)):
        rgb, depth, _ = render_view(cams, i)
        if floater and i == 0:
            depth[10:20, 15:30] *= 0.6
        scratch.save(i, rgb=rgb, acc=np.ones(depth.shape, np.float16), depth=depth)
        views.append(View(f"{i}", cams.K[i], cams.c2w[i], None, 48, 36))
    return views, scratch, cams


def test_fusion_of_true_depth_drops_a_floater_seen_by_one_view(tmp_path):
    from types import SimpleNamespace

    from mip360cli.export.mesh import MeshOptions, _fuse, extract

    loaded = SimpleNamespace(cfg=SimpleNamespace(data=SimpleNamespace(far=1e6)))
    opts = MeshOptions(resolution=96, bound=3.5, min_views=2, tolerance=0.02)
    views, scratch, cams = _true_views(tmp_path, floater=True)
    vol, dropped = _fuse(loaded, views, scratch, opts)
    vertices, faces, colors, culled = extract(vol, opts.min_views)
    d = surface_distance(vertices)
    assert np.median(d) < 0.25 * vol.voxel and np.percentile(d, 99) < 2 * vol.voxel, (np.median(d), vol.voxel)
    assert dropped >= 150  # the floater's pixels (150), unconfirmed by the neighbours
    # where the floater was (0.6 of the way to the surface, in front of camera 0) there is no surface
    patch = np.zeros((36, 48), bool)
    patch[10:20, 15:30] = True
    depth = render_view(cams, 0)[1]
    from mip360cli.export.points import unproject

    ghost = unproject(depth * 0.6, cams.K[0], cams.c2w[0])[patch]
    nearest = np.min(np.linalg.norm(vertices[::7, None] - ghost[None, ::5], axis=-1), axis=0)
    assert nearest.min() > 5 * vol.voxel, nearest.min()
    # memory follows the surface: far fewer blocks allocated than the box holds
    assert len(vol.keys) < 0.5 * np.prod(vol.blocks), (len(vol.keys), np.prod(vol.blocks))


def test_without_the_view_count_the_floater_stays(tmp_path):
    """The same fusion with the checks off (--min-views 1) keeps the floater: the test above can fail."""
    from types import SimpleNamespace

    from mip360cli.export.mesh import MeshOptions, _fuse, extract
    from mip360cli.export.points import unproject

    loaded = SimpleNamespace(cfg=SimpleNamespace(data=SimpleNamespace(far=1e6)))
    opts = MeshOptions(resolution=96, bound=3.5, min_views=1, tolerance=0.02)
    views, scratch, cams = _true_views(tmp_path, floater=True)
    vol, dropped = _fuse(loaded, views, scratch, opts)
    vertices = extract(vol, opts.min_views)[0]
    patch = np.zeros((36, 48), bool)
    patch[10:20, 15:30] = True
    ghost = unproject(render_view(cams, 0)[1] * 0.6, cams.K[0], cams.c2w[0])[patch]
    nearest = np.min(np.linalg.norm(vertices[:, None] - ghost[None, ::5], axis=-1), axis=0)
    assert dropped == 0 and nearest.min() < 2 * vol.voxel


def test_mesh_options_are_checked(trained_example, capsys, tmp_path):
    run = trained_example["run"]
    for args, words in ((["--resolution", "8"], "--resolution must be from 16"),
                        (["--truncation", "0"], "--truncation"),
                        (["--min-views", "0"], "--min-views must be from 1"),
                        (["--bound", "0"], "--bound must be > 0 for a mesh"),
                        (["--format", "stl"], "--format 'stl'")):
        code, _, err = run_cli(["export", run, "--mesh", *args, "--out", tmp_path / "m.ply"], capsys)
        assert code == 1 and words in err, (args, err)
    code, _, err = run_cli(["export", run, "--format", "glb"], capsys)
    assert code == 1 and "--format is for --mesh" in err
    code, _, err = run_cli(["export", run, "--min-views", "2", "--min-agree", "1"], capsys)
    assert code == 1 and "not both" in err
    assert not (tmp_path / "m.ply").exists()
