"""The Python API: the README's example runs as written, and gives what the command line gives."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    """The first ```python block under the README's '## Python API' heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_matches_the_command_line(trained_example, tmp_path, capsys):
    from mip360cli.cli import main
    from mip360cli.runs.load import load_run
    from mip360cli.runs.views import render_image

    run = tmp_path / "run"
    shutil.copytree(trained_example["run"], run)  # the example writes RUN/eval and RUN/export
    code = readme_example()
    assert '"runs/garden"' in code
    ns: dict = {}
    exec(compile(code.replace('"runs/garden"', repr(str(run))), "README.md", "exec"), ns)  # noqa: S102

    api_run, cams, out = ns["run"], ns["cams"], ns["out"]
    h, w = int(cams.height[0]), int(cams.width[0])
    assert out["rgb"].shape == (h, w, 3) and out["rgb"].dtype == np.float32 and out["depth"].shape == (h, w)
    assert 0 <= out["rgb"].min() and out["rgb"].max() <= 1
    # the same camera rendered in the normalized scene, as the commands do: same colours, depth scaled back
    loaded = load_run(run, device=torch.device("cpu"))
    ref = render_image(loaded.model, loaded.cameras.K[0], loaded.cameras.c2w[0], None, w, h,
                       loaded.cfg.render.chunk_rays, torch.device("cpu"))
    np.testing.assert_allclose(out["rgb"], np.clip(ref["rgb"], 0, 1), atol=1e-5)
    np.testing.assert_allclose(out["depth"], ref["median_depth"] / loaded.scale, rtol=1e-5)
    # cameras in the input world: the dataset's own COLMAP poses (the example scene's ring of cameras)
    from mip360cli.data.formats import read_cameras

    given = read_cameras(trained_example["scene"], "colmap")[1]
    i = given.names.index(cams.names[0])
    np.testing.assert_allclose(cams.c2w[0], given.c2w[i], atol=1e-6)
    # scores as `mip360 eval` computes them
    scores = ns["scores"]
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    capsys.readouterr()
    written = json.loads((run / "eval" / "metrics.json").read_text())
    assert scores["mean"]["psnr"] == pytest.approx(written["mean"]["psnr"], abs=1e-9)
    assert ns["points"].points > 1000 and ns["points"].path.exists()
    assert repr(api_run).startswith("Run(") and api_run.step == 600


def test_api_errors_are_one_message(trained_example):
    import mip360cli
    from mip360cli.core.errors import UserError

    with pytest.raises(UserError, match="not a mip360 run"):
        mip360cli.open_run(trained_example["scene"])
    run = mip360cli.open_run(trained_example["run"], device="cpu")
    with pytest.raises(UserError, match="c2w must be finite 3x4"):
        run.render(np.eye(3), np.eye(3), 8, 8)
    with pytest.raises(UserError, match="image size"):
        run.render(np.eye(4), np.eye(3), 0, 8)
    with pytest.raises(UserError, match="export_points: .*unexpected keyword"):
        run.export_points(pionts=3)
