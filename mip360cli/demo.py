"""``mip360 demo``: the whole pipeline on the example scene (example, preprocess, train, render, eval)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .core.errors import UserError
from .core.files import KIB, read_json_bounded
from .core.progress import console, progress_bar
from .data.cache import build_cache
from .data.example import make_example
from .eval.evaluate import evaluate
from .render.frames import RenderOptions, render_path
from .runs.load import load_run
from .train.loop import CannotResume, train

IMAGES = 24


@dataclass
class DemoOptions:
    out: Path = Path("mip360-demo")
    steps: int | None = None
    """Training steps (None: the tiny preset's)."""
    width: int = 64
    height: int = 48
    frames: int = 60
    device: str | None = None

    def check(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")
        if not 1 <= self.frames <= 10_000:
            raise UserError(f"--frames must be from 1 to 10000, got {self.frames}")


@dataclass
class DemoResult:
    scene: Path
    run: Path
    steps: int
    video: Path
    psnr: float
    ssim: float
    lpips: float | None


def run_demo(opts: DemoOptions) -> DemoResult:
    """Make the example scene in ``opts.out/scene`` (kept when a re-run asks for the same one), its cache,
    a run of the tiny preset in ``opts.out/run``, an orbit video and the held-out scores."""
    opts.check()
    overrides = [f"train.max_steps={opts.steps}"] if opts.steps is not None else []
    cfg = load_config("tiny", overrides + ["train.val_every=0"], {"train.device": opts.device})
    scene, run = opts.out / "scene", opts.out / "run"
    console.print(f"[bold]1/5[/bold] example scene -> {scene}")
    fresh_scene = _example_scene(scene, opts)
    console.print("[bold]2/5[/bold] ray cache")
    cache = build_cache(scene, cfg.data, cfg.cache)
    console.print(f"[bold]3/5[/bold] training the tiny preset ({cfg.train.max_steps} steps) -> {run}")
    try:
        summary = train(cache.path, run, cfg, restart=fresh_scene)
    except CannotResume as e:  # e.g. a run left by an earlier mip360: the demo simply starts it over
        console.print(f"{str(e).splitlines()[0]}; starting the demo's run over", soft_wrap=True, markup=False)
        summary = train(cache.path, run, cfg, restart=True)
    loaded = load_run(run, device=opts.device)
    console.print("[bold]4/5[/bold] orbit video with median depth")
    rendered = render_path(loaded, RenderOptions(path="ellipse", frames=opts.frames))
    console.print("[bold]5/5[/bold] scores on the held-out views")
    result = evaluate(loaded, "test", None)
    return DemoResult(scene, run, summary.step, rendered["out"] / "rgb_depth.mp4", result["mean"]["psnr"],
                      result["mean"]["ssim"], result["mean"]["lpips"])


def _example_scene(scene: Path, opts: DemoOptions) -> bool:
    """Write the example scene unless the one there is what the demo asks for; True when written."""
    wanted = {"format": "colmap", "images": IMAGES, "width": opts.width, "height": opts.height, "distortion": 0.0,
              "complete": True}
    info_file = scene / "example.json"
    current = read_json_bounded(info_file, "the example scene's description", 64 * KIB) if info_file.exists() else {}
    if isinstance(current, dict) and all(current.get(k) == v for k, v in wanted.items()):
        console.print("the example scene is already there")
        return False
    with progress_bar("rendering example", IMAGES, "images") as bar:
        make_example(scene, "colmap", IMAGES, opts.width, opts.height, progress=bar.advance)
    return True

