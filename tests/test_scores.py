"""Scores that stand beside the paper's table: 8-bit scoring, LPIPS, the record of how a score was made,
runs side by side (issue 18)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import run_cli, seeded_backbone
from mip360cli.eval import metrics

run = run_cli


def test_quantization_changes_psnr_as_computed_by_hand():
    gt = np.array([[[0.0, 0.5, 1.0]]])  # 1x1 pixel, 3 channels, exactly 8-bit values: 0, 127.5/255?, 255
    gt = np.round(gt * 255) / 255  # (0, 128/255, 1)
    render = np.array([[[0.003, 0.5, 0.999]]])
    # float: errors 0.003, 0.5 - 128/255, 0.001
    mse_float = (0.003 ** 2 + (0.5 - 128 / 255) ** 2 + 0.001 ** 2) / 3
    assert metrics.psnr(render, gt) == pytest.approx(-10 * np.log10(mse_float))
    # 8-bit: the render becomes (1/255, 128/255, 1): only the first channel is off, by one level
    q = metrics.quantize(render)
    assert q.tolist() == [[[1 / 255, 128 / 255, 1.0]]]
    assert metrics.psnr(q, gt) == pytest.approx(-10 * np.log10((1 / 255) ** 2 / 3))
    assert metrics.psnr(q, gt) != pytest.approx(metrics.psnr(render, gt))


def _lpips_by_hand(backbone: Path, x: np.ndarray, y: np.ndarray) -> float:
    """LPIPS v0.1 written out: scaled inputs, AlexNet's five ReLU outputs, unit-normalized channels,
    squared differences weighted by the package's linear layers, spatial mean, summed over layers."""
    import lpips
    import torchvision

    net = torchvision.models.alexnet(weights=None)
    net.load_state_dict(torch.load(backbone, map_location="cpu"))
    lins = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu")
    shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
    scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
    t = lambda a: (torch.as_tensor(a, dtype=torch.float32).permute(2, 0, 1)[None] * 2 - 1 - shift) / scale  # noqa
    cuts = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]
    total, a, b = 0.0, t(x), t(y)
    with torch.no_grad():
        for k, (lo, hi) in enumerate(cuts):
            for layer in net.features[lo:hi]:
                a, b = layer(a), layer(b)
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = lins[f"lin{k}.model.1.weight"]
            total += float(((na - nb) ** 2 * w).sum(1).mean())
    return total


def test_lpips_loads_the_backbone_where_torchvision_looks_and_computes_the_formula(tmp_path, monkeypatch):
    pytest.importorskip("lpips")
    from mip360cli.eval.lpips import load_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    backbone = seeded_backbone(tmp_path)
    scorer, line = load_lpips("auto", "alex", torch.device("cpu"))
    assert scorer is not None and "AlexNet" in line and "v0.1" in line
    rng = np.random.default_rng(0)
    x = rng.random((40, 48, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    assert scorer(x, x) == 0.0
    assert scorer(x, y) == pytest.approx(_lpips_by_hand(backbone, x, y), rel=1e-4, abs=1e-6)
    assert scorer(x, y) > 0.001


def test_without_the_backbone_auto_scores_the_rest_and_true_is_an_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lpips")
    from mip360cli.core.errors import UserError
    from mip360cli.eval.lpips import load_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # no weights, and no network here
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    scorer, line = load_lpips("auto", "alex", torch.device("cpu"))
    err = capsys.readouterr().err
    assert scorer is None and line.startswith("not scored") and "alexnet-owt-7be5be79.pth" in line
    assert err.count("LPIPS not scored") == 1 and str(tmp_path / "empty") in err
    with pytest.raises(UserError, match="alexnet-owt-7be5be79.pth"):
        load_lpips(True, "alex", torch.device("cpu"))
    assert load_lpips(False, "alex", torch.device("cpu")) == (None, "not scored (eval.lpips=false)")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """The example scene as the Mip-NeRF 360 dataset ships it (images/ and images_4/), and without images_4."""
    from mip360cli.data.example import make_example

    root = tmp_path_factory.mktemp("shipped")
    make_example(root / "shipped", "colmap", 16, 160, 128)  # images_4 of 40x32: AlexNet (LPIPS) takes 31 and up
    (root / "shipped" / "images_4").mkdir()
    for p in sorted((root / "shipped" / "images").iterdir()):
        img = cv2.imread(str(p))
        small = cv2.resize(img, (40, 32), interpolation=cv2.INTER_AREA)  # as the dataset ships its images_4
        cv2.imwrite(str(root / "shipped" / "images_4" / p.name), small)
    shutil.copytree(root / "shipped", root / "resized", ignore=shutil.ignore_patterns("images_4", "*.h5"))
    return {"shipped": root / "shipped", "resized": root / "resized"}


TINY = ["--config", "tiny", "train.max_steps=20", "train.batch_rays=128", "train.val_every=0"]


def _trained(dataset: Path, run_dir: Path, capsys, *extra) -> dict:
    assert run(["preprocess", dataset, "--ratio", "0.25"], capsys)[0] == 0
    code, _, err = run(["train", dataset, "--run", run_dir, *TINY, *extra], capsys)
    assert code == 0, err
    code, out, err = run(["eval", run_dir, "--device", "cpu"], capsys)
    assert code == 0, err
    return {"out": out, **json.loads((run_dir / "eval" / "metrics.json").read_text())}


def test_the_record_says_how_a_score_was_made_and_whether_it_compares(datasets, tmp_path, capsys):
    shipped = _trained(datasets["shipped"], tmp_path / "a", capsys)
    p = shipped["protocol"]
    assert p["images"]["source"] == "shipped" and p["images"]["folders"] == ["images_4"]
    assert p["images"]["as_is"] == 16 and p["images"]["resized"] == 0 and p["images"]["used"] == [40, 32]
    assert p["quantize"] is True and p["split"] == {"name": "test", "test_every": 8, "frame_interval": 1}
    assert p["held_out"] == ["000.png", "008.png"] and p["ratio"] == 0.25 and "11x11 Gaussian" in p["ssim"]
    assert p["lpips_net"] == "alex" and "AlexNet" in p["lpips"] and shipped["mean"]["lpips"] is not None
    assert p["checkpoint_step"] == p["steps_trained"] == 20 and p["train_seconds"] > 0
    assert p["comparable"] == "yes"
    assert "comparable with the Mip-NeRF 360 protocol: yes" in shipped["out"]
    assert "LPIPS" in shipped["out"] and "read as they are from images_4" in shipped["out"]

    resized = _trained(datasets["resized"], tmp_path / "b", capsys)
    p = resized["protocol"]
    assert p["images"]["source"] == "resized" and p["images"]["read"] == [160, 128]
    assert p["comparable"].startswith("no: the ground truth was resized from [160, 128] with cv2.INTER_AREA")

    floats = _trained(datasets["shipped"], tmp_path / "c", capsys, "eval.quantize=false")
    assert floats["protocol"]["comparable"] == "no: float renders scored (eval.quantize=false), not 8-bit ones"
    assert floats["mean"]["psnr"] != shipped["mean"]["psnr"]


def test_compare_sets_runs_side_by_side_and_refuses_mixed_protocols(datasets, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _trained(datasets["shipped"], a, capsys)
    _trained(datasets["shipped"], b, capsys, "train.seed=1")
    strips = tmp_path / "strips"
    code, out, err = run(["compare", a, b, "--out", strips, "--csv", "--views", "2"], capsys)
    assert code == 0, err
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(out)))
    for row, r in zip(rows, (a, b)):
        mine = json.loads((r / "eval" / "metrics.json").read_text())
        assert row["run"] == str(r) and float(row["PSNR"]) == pytest.approx(mine["mean"]["psnr"])
        assert float(row["SSIM"]) == pytest.approx(mine["mean"]["ssim"])
        assert float(row["LPIPS"]) == pytest.approx(mine["mean"]["lpips"]) and row["steps"] == "20"
        assert float(row["rays/s"]) > 0 and int(row["parameters"]) > 10_000
    made = sorted(p.name for p in strips.glob("*.png"))
    assert made == ["000.png", "008.png"]
    strip = cv2.imread(str(strips / "000.png"))
    assert strip.shape == (32, 40 * 5, 3)  # photo | run a | run b | error a | error b
    code, out, _ = run(["compare", a, b, "--out", strips, "--markdown", "--views", "0"], capsys)
    assert code == 0 and out.startswith("| run | views | PSNR |") and out.count("\n") == 4
    # a run scored another way (float renders) is refused, or flagged with --mixed
    c = tmp_path / "c"
    _trained(datasets["shipped"], c, capsys, "eval.quantize=false")
    code, _, err = run(["compare", a, c, "--out", tmp_path / "s2"], capsys)
    assert code == 1 and "scored differently (quantize)" in err, err
    code, _, err = run(["compare", a, c, "--out", tmp_path / "s2", "--mixed"], capsys)
    assert code == 0 and "scored differently: quantize" in err
    # one run, or a run not scored yet, is one message
    assert "at least two runs" in run(["compare", a], capsys)[2]
    shutil.rmtree(c / "eval")
    code, _, err = run(["compare", a, c], capsys)
    assert code == 1 and "has no scores" in err and "mip360 eval" in err


def test_without_the_lpips_package_eval_says_how_to_install_it(monkeypatch, capsys):
    import sys

    from mip360cli.core.errors import UserError
    from mip360cli.eval.lpips import load_lpips

    monkeypatch.setitem(sys.modules, "lpips", None)  # import fails as if not installed
    scorer, line = load_lpips("auto", "alex", torch.device("cpu"))
    assert scorer is None and 'the lpips package is not installed (pip install "mip360cli[lpips]"' in line
    assert "LPIPS not scored" in capsys.readouterr().err
    with pytest.raises(UserError, match="lpips package is not installed"):
        load_lpips(True, "alex", torch.device("cpu"))
