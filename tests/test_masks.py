"""Masks (``masks/`` beside ``images/``, 0 = ignore): found for every format, never in the cache, not scored."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import TRAIN_FAST, run_cli
from mip360cli.config import CacheConfig, DataConfig
from mip360cli.core.errors import UserError
from mip360cli.data.cache import RayCache, build_cache
from mip360cli.data.cache.fingerprint import cache_options
from mip360cli.data.example import make_example
from mip360cli.data.masks import decode_mask, find_masks, mask_candidates


@pytest.fixture(scope="module")
def passers_by(tmp_path_factory):
    """The conftest scene (16 views of 32x24) with a passer-by in every third photo, masked there."""
    root = tmp_path_factory.mktemp("masked")
    make_example(root / "scene", "colmap", 16, 32, 24, intruders=True)
    return root / "scene"


def _pixels(cache: RayCache) -> dict:
    out = {}
    for b in range(cache.n_buckets):
        cam, u, v, rgb = cache.read_bucket(b)
        out.update({(int(c), int(x), int(y)): tuple(p) for c, x, y, p in zip(cam, u, v, rgb)})
    return out


def test_masked_pixels_never_enter_the_cache_and_the_rest_is_the_scene_without_them(passers_by, scenes, tmp_path):
    masked = build_cache(passers_by, DataConfig(), CacheConfig(bucket_rays=2048), out=tmp_path / "masked.h5")
    clean = build_cache(scenes["colmap"], DataConfig(), CacheConfig(bucket_rays=2048), out=tmp_path / "clean.h5")
    whole = build_cache(passers_by, DataConfig(masks="none"), CacheConfig(bucket_rays=2048), out=tmp_path / "all.h5")
    masks = sorted((passers_by / "masks").glob("*.png"))
    assert [m.stem for m in masks] == ["002", "005", "008", "011", "014"]
    ignored = sum(int((cv2.imread(str(m), cv2.IMREAD_UNCHANGED) == 0).sum()) for m in masks if m.stem != "008")
    assert ignored > 100
    assert masked.rays == clean.rays - ignored and whole.rays == clean.rays
    with RayCache(masked.path) as a, RayCache(clean.path) as b:
        got, ref = _pixels(a), _pixels(b)
        assert a.masked and not b.masked
        assert len(got) == masked.rays and all(ref[k] == v for k, v in got.items())  # the same rays, no others
        assert a.test_mask(0) is None and a.test_mask(1) is not None and not a.test_mask(1).all()


def test_a_scene_without_masks_keeps_its_fingerprint():
    options = cache_options(DataConfig(), CacheConfig(), "colmap")
    assert "masks" not in options and "masks" in cache_options(DataConfig(), CacheConfig(), "colmap", n_masks=2)
    assert cache_options(DataConfig(masks="none"), CacheConfig(), "colmap")["masks"] == "none"


@pytest.mark.parametrize("fmt", ["llff", "transforms", "easymocap"])
def test_masks_are_found_for_every_format(fmt, tmp_path):
    make_example(tmp_path / fmt, fmt, 16, 32, 24, intruders=True)
    summary = build_cache(tmp_path / fmt, DataConfig(), CacheConfig(bucket_rays=2048), out=tmp_path / "c.h5")
    assert summary.rays < 14 * 32 * 24
    with RayCache(summary.path) as c:
        assert c.masked


def test_mask_names_and_sizes(tmp_path):
    root = tmp_path / "data"
    (root / "images_4").mkdir(parents=True)
    (root / "masks").mkdir()
    img = root / "images_4" / "IMG_1.JPG"
    img.write_bytes(b"")
    assert mask_candidates(root, img) == [root / "masks/IMG_1.png", root / "masks/IMG_1.JPG.png"]
    cv2.imwrite(str(root / "masks/IMG_1.JPG.png"), np.full((8, 12), 255, np.uint8))  # COLMAP's naming
    assert find_masks(root, (img,)) == (root / "masks/IMG_1.JPG.png",)
    full = np.full((40, 64), 255, np.uint8)
    full[10:14, 20:22] = 0  # a full-size mask for a 16x10 image: any masked part masks the pixel
    keep = decode_mask(cv2.imencode(".png", full)[1], root / "m.png", 16, 10)
    assert keep.shape == (10, 16) and (~keep).sum() == 2 and not keep[2:4, 5].any()
    with pytest.raises(UserError, match="not the shape"):
        decode_mask(cv2.imencode(".png", full)[1], root / "m.png", 16, 16)
    with pytest.raises(UserError, match="cannot decode mask"):
        decode_mask(np.frombuffer(b"not a png", np.uint8), root / "m.png", 16, 10)


def test_a_new_or_changed_mask_rebuilds_the_cache(passers_by, tmp_path, capsys):
    scene = tmp_path / "scene"
    shutil.copytree(passers_by, scene)
    first = build_cache(scene, DataConfig(), CacheConfig(bucket_rays=2048))
    keep = np.full((24, 32), 255, np.uint8)
    keep[:5] = 0
    cv2.imwrite(str(scene / "masks/000.png"), keep)
    second = build_cache(scene, DataConfig(), CacheConfig(bucket_rays=2048))
    assert second.status == "built" and any("added: masks/000.png" in r for r in second.reasons)
    assert second.rays == first.rays  # 000 is held out: scored without its top rows, not trained on
    cv2.imwrite(str(scene / "masks/002.png"), keep)
    third = build_cache(scene, DataConfig(), CacheConfig(bucket_rays=2048))
    assert any("modified: masks/002.png" in r for r in third.reasons) and third.rays != second.rays


def test_eval_does_not_score_masked_pixels(passers_by, tmp_path, capsys):
    scene = tmp_path / "scene"
    shutil.copytree(passers_by, scene)
    run = tmp_path / "run"
    assert run_cli(["train", scene, "--run", run, *TRAIN_FAST], capsys)[0] == 0
    code, out, err = run_cli(["eval", run], capsys)
    assert code == 0, err
    result = json.loads((run / "eval/metrics.json").read_text())
    rows = {r["name"]: r for r in result["per_image"]}
    assert "masked" not in rows["000.png"] and 0 < rows["008.png"]["masked"] < 0.5
    assert result["protocol"]["masks"]["views"] == 1
    # the score of 008 is that of its unmasked pixels: painting the masked ones changes nothing
    from mip360cli.eval import metrics

    photo = cv2.cvtColor(cv2.imread(str(scene / "images/008.png")), cv2.COLOR_BGR2RGB) / 255.0
    keep = cv2.imread(str(scene / "masks/008.png"), cv2.IMREAD_UNCHANGED) > 0
    panel = cv2.cvtColor(cv2.imread(str(run / "eval/images/008.png")), cv2.COLOR_BGR2RGB) / 255.0
    render = panel[:, 32:64]
    assert metrics.psnr(render, photo, keep) == pytest.approx(rows["008.png"]["psnr"], abs=1e-6)
    assert metrics.psnr(render, np.where(keep[..., None], photo, 0), keep) == pytest.approx(rows["008.png"]["psnr"])
    assert metrics.psnr(render, photo) != pytest.approx(rows["008.png"]["psnr"], abs=0.01)


def test_a_masked_passer_by_leaves_no_trace_in_the_model(tmp_path):
    """Trained with its masks, the example with a passer-by in every third photo renders those photos' views as
    the scene without it: no magenta where it stood. Trained on the same photos without masks, it does leave
    one (the check can fail). 24 views of 48x36, 300 tiny steps each."""
    from mip360cli.config import load_config
    from mip360cli.data.example import INTRUDER_COLOR, render_view, ring_cameras
    from mip360cli.runs.load import load_run
    from mip360cli.runs.views import render_image
    from mip360cli.train.loop import train

    scene = tmp_path / "scene"
    make_example(scene, "colmap", 24, 48, 36, intruders=True)
    views = [i for i in range(24) if (scene / f"masks/{i:03d}.png").exists() and i % 8]  # trained on
    cams = ring_cameras(24, 48, 36)

    def magenta(rgb: np.ndarray) -> np.ndarray:
        return (rgb[..., 0] + rgb[..., 2]) / 2 - rgb[..., 1]

    assert magenta(INTRUDER_COLOR) > 0.7
    excess = {}
    for masks in ("auto", "none"):
        cache = build_cache(scene, DataConfig(masks=masks), CacheConfig(bucket_rays=4096), out=tmp_path / f"{masks}.h5")
        train(cache.path, tmp_path / masks, load_config("tiny", ["train.max_steps=300", "train.val_every=0",
                                                                  f"data.masks={masks}"]))
        loaded = load_run(tmp_path / masks, device="cpu")
        values = []
        for i in views:
            region = cv2.imread(str(scene / f"masks/{i:03d}.png"), cv2.IMREAD_UNCHANGED) == 0
            clean = render_view(cams, i)[0] / 255.0
            out = render_image(loaded.model, loaded.cameras.K[i], loaded.cameras.c2w[i], None, 48, 36, "auto",
                               loaded.device, depth=False)["rgb"]
            values.append(float((magenta(np.clip(out, 0, 1)) - magenta(clean))[region].mean()))
        excess[masks] = float(np.mean(values))
    # measured: 0.00 with masks, 0.11-0.26 without (600 steps of 64x48, two seeds)
    assert abs(excess["auto"]) < 0.03 and excess["none"] > 0.06, excess


def test_eval_at_another_ratio_reads_the_masks_and_skips_a_view_masked_entirely(passers_by, tmp_path, capsys):
    scene = tmp_path / "scene"
    shutil.copytree(passers_by, scene)
    run = tmp_path / "run"
    assert run_cli(["train", scene, "--run", run, *TRAIN_FAST], capsys)[0] == 0
    cv2.imwrite(str(scene / "masks/000.png"), np.zeros((24, 32), np.uint8))
    code, out, err = run_cli(["eval", run, "--ratio", "0.5"], capsys)
    assert code == 0, err
    assert "000.png is masked entirely: not scored" in err
    rows = json.loads((run / "eval/metrics.json").read_text())["per_image"]
    assert [r["name"] for r in rows] == ["008.png"] and 0 < rows[0]["masked"] < 0.5
    cv2.imwrite(str(scene / "masks/008.png"), np.zeros((24, 32), np.uint8))
    code, out, err = run_cli(["eval", run, "--ratio", "0.5"], capsys)
    assert code == 1 and "masked entirely: nothing to score" in err
