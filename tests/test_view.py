"""The viewer's server side without a browser: frames for a camera, the budget, new checkpoints, camera
paths that `mip360 render --path` renders to the views the viewer showed, the viser server itself."""

import json
import math
import socket
import shutil

import numpy as np
import pytest
import torch

from mip360cli.runs.load import load_run
from mip360cli.runs.views import render_image
from mip360cli.runs.writers import depth_range, depth_to_color, to_uint8
from mip360cli.runs import checkpoints as ckpt
from mip360cli.view.core import CameraPath, RenderJob, ViewCamera, ViewerCore, frame_size

CPU = torch.device("cpu")


@pytest.fixture
def run(trained_example, tmp_path):
    """A writable copy of the trained example run."""
    return shutil.copytree(trained_example["run"], tmp_path / "run")


def _camera(loaded, i=0) -> ViewCamera:
    cams = loaded.cameras
    h = float(cams.height[i])
    return ViewCamera(cams.c2w[i], 2 * math.atan(0.5 * h / float(cams.K[i][1, 1])),
                      float(cams.width[i]) / h)


def test_a_frame_for_a_camera_is_render_image_of_that_camera(run):
    loaded = load_run(run, device=CPU)
    core = ViewerCore(loaded.model, CPU, chunk=1000, settle_s=0.0)  # still at once: the full-size frame
    cam = _camera(loaded, 3)
    core.request("client", cam, max_side=64)
    frames = []
    while not frames:
        frames = core.work(0.0)  # one chunk per call: a 64x48 frame takes 4
    client, image, job = frames[0]
    assert client == "client" and (job.width, job.height) == (64, 48) and image.shape == (48, 64, 3)
    K = cam.intrinsics(64, 48)
    ref = render_image(loaded.model, K, cam.c2w, None, 64, 48, 4096, CPU)
    assert np.abs(image.astype(int) - to_uint8(ref["rgb"]).astype(int)).max() <= 1
    assert core.work(0.0) == []  # refined: nothing more until the camera moves

    core.set_mode("median depth")  # the same colormap and range as `mip360 render`
    frames = []
    while not frames:
        frames = core.work(1.0)
    want = depth_to_color(ref["median_depth"], *depth_range([ref["median_depth"]]))
    assert (np.abs(frames[0][1].astype(int) - want.astype(int)) > 2).mean() < 0.01


def test_the_frame_budget_sets_the_size_of_moving_frames(run):
    loaded = load_run(run, device=CPU)
    core = ViewerCore(loaded.model, CPU, chunk=256, budget_s=0.05, settle_s=60.0)  # stays "moving"
    core.rays_per_s = 40_000.0  # as if measured
    cam = _camera(loaded)
    w, h = core.moving_size(cam, 1024)
    assert w * h <= 0.05 * 40_000 * 1.05 and w * h >= 0.05 * 40_000 * 0.8 and abs(w / h - cam.aspect) < 0.1
    core.request("c", cam)
    assert core.pending()
    job = core.jobs["c"]
    assert (job.width, job.height) == (w, h)
    core.work(0.0)
    assert job.done_rays == 256  # work(0) renders one chunk: training gives the viewer time in small pieces
    while not core.work(0.0):
        pass
    assert core.rays_per_s != 40_000.0  # measured on the frame
    core.budget_s = 0.01
    assert np.prod(core.moving_size(cam, 1024)) < w * h
    assert frame_size(cam.aspect, 1e12, 200) == (200, 150)  # a still frame: the client's size, capped


def test_a_new_checkpoint_is_picked_up(run):
    loaded = load_run(run, device=CPU)
    core = ViewerCore(loaded.model, CPU, chunk=4096, settle_s=0.0, run=run, checkpoint_step=loaded.step)
    cam = _camera(loaded)
    before = core.render_now(cam, 32, 24)
    assert not core.reload_if_newer()  # the checkpoint it was started with
    step, last = ckpt.list_checkpoints(run)[-1]
    state = ckpt.load_checkpoint(last)
    state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}  # another model entirely
    state["step"] = step + 1
    ckpt.save_checkpoint(run, step + 1, state, keep=3)
    assert core.reload_if_newer() and core.checkpoint_step == step + 1
    after = core.render_now(cam, 32, 24)
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 5
    assert not core.reload_if_newer()


@pytest.mark.parametrize("fmt", ["nerfstudio", "mip360"])
def test_a_camera_path_drawn_in_the_viewer_renders_with_render_path(run, fmt, capsys):
    from conftest import run_cli
    from mip360cli.data.images import read_image

    loaded = load_run(run, device=CPU)
    core = ViewerCore(loaded.model, CPU, chunk=4096)
    path = CameraPath(duration_s=1.0, fps=4.0, width=40, height=30)
    for i in (0, 5, 11):  # keyframes at three training views, one reordered, one deleted
        path.add(_camera(loaded, i))
    path.add(_camera(loaded, 2))
    path.move(3, 1)
    path.delete(3)
    path.fov_deg = 50.0
    frames = path.frames()
    assert len(frames) == 4 and np.allclose(frames[0].c2w, loaded.cameras.c2w[0])
    assert not np.allclose(frames[1].c2w[:, 3], loaded.cameras.c2w[2][:, 3], atol=1e-6)  # interpolated
    assert np.allclose(frames[-1].c2w, loaded.cameras.c2w[5], atol=1e-6)  # ends on the last keyframe
    shown = [core.render_now(f, 40, 30) for f in frames]
    saved = path.save(run / "camera_paths" / f"p_{fmt}.json", fmt, loaded.transform)
    code, _, err = run_cli(["render", run, "--path", saved, "--no-video", "--device", "cpu"], capsys)
    assert code == 0, err
    out = run / "renders" / f"p_{fmt}"
    rendered = [read_image(p) for p in sorted((out / "rgb").glob("*.png"))]
    assert len(rendered) == 4
    for a, b in zip(shown, rendered):
        assert a.shape == b.shape == (30, 40, 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    data = json.loads(saved.read_text())
    assert ("camera_path" in data) == (fmt == "nerfstudio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_viser_server_serves_the_page_on_localhost(run, capsys):
    pytest.importorskip("viser")
    import urllib.request

    from mip360cli.view.server import ShownCameras, Viewer

    loaded = load_run(run, device=CPU)
    core = ViewerCore(loaded.model, CPU, chunk=4096)
    viewer = Viewer(core, ShownCameras.training(loaded.cameras, loaded.train), loaded.transform,
                    run / "camera_paths", port=_free_port(), background=False)
    try:
        assert viewer.url.startswith("http://localhost:")
        page = urllib.request.urlopen(viewer.url, timeout=10).read().decode()
        assert "<html" in page.lower()
        viewer.path.add(_camera(loaded, 0))
        viewer.path.add(_camera(loaded, 4))
        out = viewer.save_path("../../outside", "mip360")  # a name, not a path: stays in camera_paths/
        assert out == run / "camera_paths" / "outside.json" and out.exists()
    finally:
        viewer.close()
    assert "anyone who can reach" not in capsys.readouterr().err


def test_a_viewer_on_another_address_says_who_can_see_it(capsys):
    from mip360cli.view.server import check_host

    check_host("127.0.0.1")
    assert capsys.readouterr().err == ""
    check_host("0.0.0.0")
    assert "anyone who can reach this port" in capsys.readouterr().err


def test_render_job_pads_to_one_shape_for_a_compiled_model():
    class Fake(torch.nn.Module):
        compiled, near, far = True, 0.1, 10.0

        def __init__(self):
            super().__init__()
            self.shapes = []

        def forward(self, o, d, vd):
            from mip360cli.model.model import Level

            self.shapes.append(o.shape[0])
            n = o.shape[0]
            t = torch.linspace(1, 2, 3).expand(n, 3)
            return [Level(t, t, torch.full((n, 2), 0.5), torch.sigmoid(o))]

    model = Fake()
    job = RenderJob(model, ViewCamera(np.eye(3, 4), 1.0, 1.0), 10, 10, 32, CPU)
    job.advance(float("inf"))
    assert set(model.shapes) == {32} and job.image().shape == (10, 10, 3)


def test_training_with_the_viewer_renders_between_steps(trained_example, tmp_path):
    pytest.importorskip("viser")
    from mip360cli.config import load_config
    from mip360cli.train import loop
    from mip360cli.view.server import ViewerHook

    started = []

    class WithABrowser(ViewerHook):  # the hook `mip360 train --viewer` hands in, and a browser looking
        def start(self, ctx):
            super().start(ctx)
            self.live.viewer.core.request("someone", ViewCamera(ctx.cameras.c2w[0], 0.8, 4 / 3), max_side=32)
            started.append(self.live)

    summary = loop.train(trained_example["cache"], tmp_path / "live",
                         load_config("tiny", ["train.max_steps=40", "train.val_every=0", "train.batch_rays=256"]),
                         hooks=[WithABrowser("127.0.0.1", _free_port())])
    assert summary.step == 40
    (live,) = started
    assert live.viewer.core.frames_rendered >= 1  # between steps, in the training thread
    assert live.viewer.server is not None


def test_the_viewer_draws_an_exported_mesh_and_point_cloud(run, tmp_path):
    """`mip360 view --show`: an export read back into the run's scene is drawn (a mesh and a point cloud), with a
    checkbox that hides it."""
    from mip360cli.export.mesh import read_geometry
    from mip360cli.export.points import write_ply
    from mip360cli.view.server import ShownCameras, Viewer

    loaded = load_run(run, device=CPU)
    rng = np.random.default_rng(0)
    write_ply(tmp_path / "points.ply", rng.normal(size=(50, 3)).astype(np.float32),
              rng.integers(0, 255, (50, 3), dtype=np.uint8))
    import trimesh

    box = trimesh.creation.box()
    box.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(box.vertices), 1))
    box.export(tmp_path / "box.obj")
    viewer = Viewer(ViewerCore(loaded.model, CPU, chunk=4096), ShownCameras.training(loaded.cameras, loaded.train),
                    loaded.transform, run / "camera_paths", port=_free_port(), background=False)
    try:
        for name in ("points.ply", "box.obj"):
            geometry = read_geometry(tmp_path / name, loaded.transform)
            viewer.show_geometry(name, geometry)
        (_, points, _), (_, mesh, check) = viewer._shown
        assert type(points).__name__ == "PointCloudHandle" and type(mesh).__name__ == "GlbHandle"
        # files of other tools are in the input world: moved into the normalized scene like the cameras
        expected = np.asarray(box.vertices) @ loaded.transform[:3, :3].T + loaded.transform[:3, 3]
        np.testing.assert_allclose(np.sort(geometry["vertices"], 0), np.sort(expected, 0), atol=1e-5)
        assert geometry["colors"][0].tolist() == [200, 30, 30]
        check.value = False  # the checkbox hides it
        assert mesh.visible is False
    finally:
        viewer.close()
