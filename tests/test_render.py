"""Paths, writers, eval metrics, and render/eval/demo of a tiny trained model."""

import json
import shutil

import numpy as np
import pytest
import torch

from mip360cli.cli import main
from mip360cli.config import CacheConfig, DataConfig, load_config
from mip360cli.data.cache import build_cache
from mip360cli.data.images import read_image
from mip360cli.data.example import make_example, ring_cameras
from mip360cli.data.cameras import normalize_poses
from mip360cli.eval.metrics import gaussian_filter, psnr, ssim
from mip360cli.render import paths
from mip360cli.runs.camera_paths import load_path_file
from mip360cli.runs.writers import count_video_frames, depth_range, depth_to_color, write_video
from mip360cli.train.loop import train


def _cams():
    c2w, _ = normalize_poses(ring_cameras(16, 32, 24).c2w)
    return c2w


def test_focus_point_and_ellipse():
    c2w = _cams()
    f = paths.focus_point(c2w)
    assert np.linalg.norm(f[:2]) < 0.1  # the ring looks at the middle
    poses = paths.ellipse_path(c2w, 30)
    assert poses.shape == (30, 3, 4)
    np.testing.assert_allclose(poses[:, 2, 3], 0, atol=1e-12)  # in the horizontal plane of the cameras
    for p in poses:
        to_focus = f - p[:, 3]
        np.testing.assert_allclose(p[:, 2], to_focus / np.linalg.norm(to_focus), atol=1e-9)  # looks at it
        assert p[2, 1] < 0  # image down points world-down (up = +z)
        np.testing.assert_allclose(p[:, :3].T @ p[:, :3], np.eye(3), atol=1e-9)
    r = np.linalg.norm(poses[:, :2, 3] - f[:2], axis=1)
    assert r.min() > 0.5 and r.max() < 1.5


def test_spiral_and_interp():
    c2w = _cams()
    s = paths.spiral_path(c2w, 40)
    assert s.shape == (40, 3, 4) and np.isfinite(s).all()
    i = paths.interp_path(c2w[:4], 8)
    np.testing.assert_allclose(i[0], c2w[0], atol=1e-9)
    np.testing.assert_allclose(i[2], c2w[1], atol=1e-9)  # 2 frames per segment: every other frame is a key
    mid = i[1][:, 3]
    np.testing.assert_allclose(mid, (c2w[0][:, 3] + c2w[1][:, 3]) / 2, atol=1e-9)


def test_camera_path_files(tmp_path):
    T = np.eye(4)
    T[:3, :3] *= 0.5  # input units -> normalized: scale 0.5
    own = {"width": 20, "height": 10, "fov_deg": 90, "frames": [{"c2w": np.eye(3, 4).tolist()},
                                                                 {"c2w": np.eye(4).tolist()}]}
    (tmp_path / "own.json").write_text(json.dumps(own))
    poses, Ks, size = load_path_file(tmp_path / "own.json", T, (32, 24), np.eye(3))
    assert size == (20, 10) and poses.shape == (2, 3, 4)
    assert Ks[0][1, 1] == pytest.approx(5.0)  # fy = h/2 / tan(45 deg)
    ns = {"render_width": 16, "render_height": 8, "camera_path": [
        {"camera_to_world": np.eye(4).ravel().tolist(), "fov": 60}]}
    (tmp_path / "ns.json").write_text(json.dumps(ns))
    poses, Ks, size = load_path_file(tmp_path / "ns.json", T, (32, 24), np.eye(3))
    np.testing.assert_allclose(poses[0][:, :3], np.diag([1.0, -1, -1]))  # OpenGL -> OpenCV axes
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Exception, match="malformed JSON"):
        load_path_file(tmp_path / "bad.json", T, (32, 24), np.eye(3))


def test_depth_colormap_uses_one_range():
    a, b = np.full((4, 4), 1.0), np.full((4, 4), 4.0)
    lo, hi = depth_range([a, b])
    assert (lo, hi) == (1.0, 4.0)
    ca, cb = depth_to_color(a, lo, hi), depth_to_color(b, lo, hi)
    assert not np.array_equal(ca, cb)  # near and far get different colors across frames
    np.testing.assert_array_equal(depth_to_color(np.full((2, 2), 1.0), lo, hi), ca[:2, :2])
    masked = depth_to_color(np.array([[1.0, np.nan]]), lo, hi)
    assert (masked[0, 1] == 0).all() and masked[0, 0].any()  # no surface -> black


def test_video_is_written_and_readable(tmp_path):
    frames = [np.full((15, 21, 3), i * 20, np.uint8) for i in range(7)]
    assert write_video(tmp_path / "v.mp4", iter(frames), 10) == 7
    assert count_video_frames(tmp_path / "v.mp4") == 7


def _brute_ssim(a, b):
    f = gaussian_filter()
    w = np.outer(f, f)
    h, wd = a.shape[:2]
    out = []
    for c in range(a.shape[2]):
        for i in range(h - 10):
            for j in range(wd - 10):
                x, y = a[i:i + 11, j:j + 11, c], b[i:i + 11, j:j + 11, c]
                mx, my = (w * x).sum(), (w * y).sum()
                vx = max((w * x * x).sum() - mx * mx, 0)
                vy = max((w * y * y).sum() - my * my, 0)
                cxy = (w * x * y).sum() - mx * my
                cxy = np.sign(cxy) * min(np.sqrt(vx * vy), abs(cxy))
                out.append(((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx * mx + my * my + 1e-4) * (vx + vy + 9e-4)))
    return float(np.mean(out))


def test_ssim_references_and_bruteforce():
    a = np.outer(np.linspace(0, 1, 32), np.linspace(0, 1, 40))
    a3 = np.stack([a] * 3, -1)
    x = np.arange(40)[None, :, None]
    assert ssim(a3, 0.9 * a3) == pytest.approx(0.9909619, abs=1e-6)
    b = np.clip(0.8 * a3 + 0.1 + 0.05 * np.sin(x / 3), 0, 1)
    assert ssim(a3, b) == pytest.approx(0.7920673, abs=1e-6)
    assert ssim(a3, a3) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    c, d = rng.random((20, 24, 3)), rng.random((20, 24, 3))
    assert ssim(c, d) == pytest.approx(_brute_ssim(c, d), abs=1e-9)
    assert psnr(np.zeros(4), np.full(4, 0.1)) == pytest.approx(20.0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    make_example(root / "scene", "colmap", 16, 24, 16)
    cache = build_cache(root / "scene", DataConfig(), CacheConfig(bucket_rays=2048), out=root / "c.h5").path
    cfg = load_config("tiny", ["train.max_steps=30", "train.val_every=0", "train.batch_rays=256"])
    train(cache, root / "run", cfg)
    return root / "run"


def test_render_path_frames_depth_video_and_resume(trained_run, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["render", str(trained_run), "--frames", "6", "--out", str(out), "vis_median_depth=true",
                 "ratio=2.0"])
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in (out / "rgb").iterdir())
    assert names == [f"{i:05d}.png" for i in range(6)]
    d = np.load(out / "depth" / "00000.npy")
    assert d.dtype == np.float32 and d.shape == (32, 48)  # ratio 2 of 24x16
    assert (out / "depth" / "00000.png").exists()
    for v in ("rgb.mp4", "depth.mp4", "rgb_depth.mp4"):
        assert count_video_frames(out / v) == 6
    capsys.readouterr()
    before = (out / "rgb" / "00003.png").stat().st_mtime_ns
    (out / "rgb" / "00004.png").unlink()
    assert main(["render", str(trained_run), "--frames", "6", "--out", str(out), "--no-video", "vis_median_depth=true",
                 "ratio=2.0"]) == 0
    err = capsys.readouterr().err
    assert "5 already there" in err
    assert (out / "rgb" / "00003.png").stat().st_mtime_ns == before and (out / "rgb" / "00004.png").exists()


def test_render_never_mixes_frames_of_other_options_or_checkpoints(trained_run, tmp_path, capsys):
    out = tmp_path / "r"
    common = ["render", str(trained_run), "--out", str(out), "--no-video", "--depth", "none"]
    assert main(common + ["--frames", "4"]) == 0
    first = (out / "rgb" / "00001.png").read_bytes()
    capsys.readouterr()
    # another orbit (8 frames): frame 1 is another view, rendered again, not taken from the 4-frame orbit
    assert main(common + ["--frames", "8"]) == 0
    err = capsys.readouterr().err
    assert "were made with another" in err and "already there" not in err
    assert len(list((out / "rgb").iterdir())) == 8 and (out / "rgb" / "00001.png").read_bytes() != first
    # another size
    assert main(common + ["--frames", "8", "--ratio", "0.5"]) == 0
    assert "size" in capsys.readouterr().err
    assert read_image(out / "rgb" / "00000.png").shape[:2] == (8, 12)
    # the same options again: every frame is kept
    assert main(common + ["--frames", "8", "--ratio", "0.5"]) == 0
    assert "8 already there" in capsys.readouterr().err
    # a newer checkpoint: the frames are stale
    from mip360cli.runs import checkpoints as ckpt

    step, last = ckpt.list_checkpoints(trained_run)[-1]
    newer = last.with_name(f"step_{step + 1:07d}.pt")
    shutil.copy(last, newer)
    try:
        assert main(common + ["--frames", "8", "--ratio", "0.5"]) == 0
        err = capsys.readouterr().err
        assert "checkpoint" in err and "already there" not in err
    finally:
        newer.unlink()


def test_render_fps_must_be_positive_and_ffmpeg_failures_are_errors(trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "v"
    assert main(["render", str(trained_run), "--frames", "2", "--out", str(out), "--fps", "-5"]) == 1
    assert "--fps -5" in capsys.readouterr().err and not list(out.glob("*.mp4"))
    import imageio_ffmpeg

    monkeypatch.setattr(imageio_ffmpeg, "count_frames_and_secs", lambda path: (1, 0.1))  # as if cut short
    assert main(["render", str(trained_run), "--frames", "2", "--out", str(out), "--depth", "none"]) == 1
    err = capsys.readouterr().err
    assert "ffmpeg wrote 1 of the 2 frames" in err and not list(out.glob("*.mp4"))
    assert not list(out.glob(".*partial*"))


def test_render_split_over_two_processes(trained_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "mip360cli", "render", str(trained_run), "--frames", "5", "--gpus", "2",
                        "--out", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in (out / "rgb").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert count_video_frames(out / "rgb_depth.mp4") == 5


def test_render_test_views_and_eval(trained_run, capsys):
    assert main(["render", str(trained_run), "--path", "test", "--depth", "mean", "--no-video"]) == 0
    assert sorted(p.name for p in (trained_run / "renders" / "test" / "rgb").iterdir()) == ["000.png", "008.png"]
    assert main(["eval", str(trained_run)]) == 0
    out = capsys.readouterr().out
    m = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert m["views"] == 2 and m["step"] == 30 and len(m["per_image"]) == 2 and m["ratio"] == 1.0
    assert m["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in m["per_image"]]))
    assert (trained_run / "eval" / "per_image.csv").read_text().startswith("name,psnr,ssim")
    assert (trained_run / "eval" / "images" / "000.png").exists()
    assert "mean" in out
    # an independent check of one score: re-render view 0 and compute PSNR by hand
    from mip360cli.data.cache import RayCache
    from mip360cli.runs.load import load_run
    from mip360cli.runs.views import render_image

    loaded = load_run(trained_run, device=torch.device("cpu"))
    c = loaded.cameras
    img = render_image(loaded.model, c.K[0], c.c2w[0], c.dist[0], 24, 16, 1024, torch.device("cpu"))["rgb"]
    with RayCache(loaded.cache_path) as cache:
        gt = cache.test_image(0) / 255.0
    eight_bit = np.round(np.clip(img, 0, 1).astype(np.float64) * 255) / 255  # eval.quantize: the published way
    ref = -10 * np.log10(((eight_bit - gt) ** 2).mean())
    assert m["per_image"][0]["psnr"] == pytest.approx(ref, abs=1e-4)
    assert main(["eval", str(trained_run), "--split", "train"]) == 0
    assert json.loads((trained_run / "eval" / "metrics.json").read_text())["views"] == 14
    # render.chunk_rays on the command line (an earlier run keeps its number in config.yaml): the same scores
    assert main(["eval", str(trained_run), "render.chunk_rays=7"]) == 0
    m7 = json.loads((trained_run / "eval" / "metrics.json").read_text())
    assert [r["psnr"] for r in m7["per_image"]] == pytest.approx([r["psnr"] for r in m["per_image"]], abs=1e-4)


@pytest.mark.parametrize("argv, needle", [
    (["render", "{tmp}/nope"], "is not a mip360 run"),
    (["render", "{run}", "--path", "zigzag"], "unknown path 'zigzag'"),
    (["render", "{run}", "--path", "{tmp}/missing.json"], "does not exist"),
    (["render", "{run}", "--checkpoint", "{tmp}/none.pt"], "does not exist"),
    (["render", "{run}", "--depth", "deep"], "choose none, mean or median"),
    (["render", "{run}", "colour=1"], "unknown render option"),
    (["eval", "{run}", "--split", "val"], "choose test or train"),
    (["eval", "{run}", "render.chunk=64"], "did you mean 'render.chunk_rays'"),
    (["eval", "{run}", "render.chunk_rays=0"], "render.chunk_rays must be >= 1 or auto"),
    (["export", "{run}", "vis_depth_map=true"], "export takes no vis_depth_map"),
])
def test_bad_render_inputs(trained_run, tmp_path, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path, run=trained_run) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0 and needle in err and "Traceback" not in err


def test_run_without_checkpoint(tmp_path, capsys, trained_run):
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(trained_run / "config.yaml", empty / "config.yaml")
    assert main(["render", str(empty)]) == 1
    assert "has no checkpoint yet" in capsys.readouterr().err


def test_demo_pipeline_shortened(tmp_path, capsys):
    code = main(["demo", str(tmp_path / "demo"), "--steps", "20", "--size", "24x16", "--frames", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "demo" / "run" / "renders" / "ellipse" / "rgb_depth.mp4").exists()
    assert (tmp_path / "demo" / "run" / "eval" / "metrics.json").exists()
    assert "PSNR" in out and "video" in out
    # running it again reuses the scene, the cache and the trained run
    assert main(["demo", str(tmp_path / "demo"), "--steps", "20", "--size", "24x16", "--frames", "4"]) == 0
    err = capsys.readouterr().err
    assert "the example scene is already there" in err and "already trained to step 20" in err
    # a run left by an earlier mip360 (other layer shapes) cannot be resumed: the demo starts it over
    from test_model import _old_layout_state

    from mip360cli.runs import checkpoints as ckpt

    step, last = ckpt.list_checkpoints(tmp_path / "demo" / "run")[-1]
    state = ckpt.load_checkpoint(last)
    state["model"] = _old_layout_state(load_config("tiny").model)
    torch.save(state, last)
    assert main(["demo", str(tmp_path / "demo"), "--steps", "20", "--size", "24x16", "--frames", "4"]) == 0
    assert "starting the demo's run over" in capsys.readouterr().err
