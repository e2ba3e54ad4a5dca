"""The ``mip360`` command: each subcommand parses its options, calls one function and prints the result.

The work is done by the stages (``train``, ``render``, ``eval``, ``view``, ``export``), the demo
(``demo.py``) and the data modules; this module only turns arguments into their options and their
results into lines, and turns errors into one message and an exit code (:func:`main`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from .config import RENDER_ALIASES_HELP
from .core.errors import Interrupted, UserError, interrupt_on_ctrl_c
from .core.progress import console
from .core.threads import prefer_short_spin
from .core.version import __version__

OVERRIDES_HELP = ("Config overrides as dotted key=value, e.g. data.ratio=0.5 cache.workers=8 "
                  "(aliases: ratio, frame_interval, test_every).")
CONFIG_HELP = "YAML config file or preset name (default, tiny); a file may name a 'base:' file."
RENDER_KEYS_HELP = "render.chunk_rays=N|auto (rays at once; default: the run's), ratio=R."

app = typer.Typer(
    name="mip360",
    help="Mip-NeRF 360 for large unbounded scenes: preprocess photos and poses into a ray cache, "
         "train, render novel views and depth, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mip360 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors "
                                                      "(may also be given after the subcommand)."),
) -> None:
    """Mip-NeRF 360 toolkit."""


@app.command("example")
def example_cmd(
    out: Path = typer.Argument(..., help="Folder to write the scene into (created if needed)."),
    format: str = typer.Option("colmap", "--format", "-f", help="colmap | llff | transforms | easymocap"),
    images: int = typer.Option(24, "--images", "-n", min=2, help="Number of cameras on the ring."),
    size: str = typer.Option("64x48", "--size", help="Image size WxH (or W, height = 3/4 W)."),
    distortion: float = typer.Option(0.0, "--distortion", help="Radial lens distortion k1 (not for llff)."),
    text: bool = typer.Option(False, "--text", help="COLMAP only: write the text model instead of binary."),
    texture: bool = typer.Option(False, "--texture", help="Add non-repeating surface detail, as real photos have, "
                                                          "so that `mip360 poses` can match features."),
    exposure: float = typer.Option(0.0, "--exposure", help="Walk the ring twice (the second time closer) while the "
                                   "light changes by this many stops between the passes (for model.appearance.dim)."),
    intruders: bool = typer.Option(False, "--intruders", help="Put a passer-by in every third photo and write "
                                   "masks/ that exclude it (for masked training)."),
    scales: int = typer.Option(1, "--scales", help="Also write each photo at 1/2, 1/4, ... of its size (this "
                               "many sizes in all) as images d2/, d4/, ...: multi-scale data, which "
                               "model.encoding.integrated learns anti-aliasing from. --images must be a "
                               "multiple of 8."),
) -> None:
    """Write a small procedural 360-degree scene (images, cameras, ground-truth depth)."""
    from .core.progress import progress_bar
    from .data.example import check_example_options, make_example

    width, height = _parse_size(size)
    check_example_options(format, images, width, height, distortion, exposure, scales)
    with progress_bar("rendering example", images, "images") as bar:
        make_example(out, format, images, width, height, distortion, colmap_binary=not text,
                     progress=bar.advance, texture=texture, exposure=exposure, intruders=intruders,
                     scales=scales)
    sizes = f" (and at {scales - 1} smaller sizes)" if scales > 1 else ""
    typer.echo(f"wrote a {images}-image {width}x{height}{sizes} example scene ({format}) to {out}")
    typer.echo(f"next: mip360 preprocess {out}")


def _parse_size(size: str) -> tuple[int, int]:
    """``WxH`` (or ``W``, height 3/4 W) -> (width, height), each at least 4."""
    try:
        parts = [int(x) for x in size.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts.append(max(1, parts[0] * 3 // 4))
    if len(parts) != 2 or min(parts) < 4:
        raise UserError(f"--size {size!r}: expected WxH with both at least 4, e.g. 64x48")
    return parts[0], parts[1]


@app.command("poses")
def poses_cmd(
    source: Path = typer.Argument(..., help="A video (mp4, mov, ...) or a folder of photos (or a dataset folder "
                                            "with images/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dataset folder to write images/ and sparse/0 "
                                                                 "into (default: the video's name; a folder with "
                                                                 "images/ itself; else PHOTOS-mip360/)."),
    fps: float = typer.Option(2.0, "--fps", help="Frames per second taken from a video."),
    keep: Optional[float] = typer.Option(None, "--keep", help="Fraction of the sharpest frames kept (variance of "
                                                              "the Laplacian) (default: 0.9 for a video, 1 for "
                                                              "photos)."),
    max_size: int = typer.Option(1600, "--max-size", help="Longest image side at which features are found."),
    matcher: str = typer.Option("auto", "--matcher", help="auto | exhaustive | sequential (default auto: "
                                                          "exhaustive, sequential for videos of over 150 frames)."),
    overlap: int = typer.Option(10, "--overlap", help="Sequential matching: neighbours each image is matched with."),
    camera_model: str = typer.Option("SIMPLE_RADIAL", "--camera-model",
                                     help="SIMPLE_PINHOLE | PINHOLE | SIMPLE_RADIAL | RADIAL | OPENCV."),
    camera: Optional[str] = typer.Option(None, "--camera", help="auto | single | per-image: which images share "
                                                                "intrinsics (default: single for a video, auto "
                                                                "for photos)."),
    min_registered: float = typer.Option(0.5, "--min-registered", help="Fail when fewer than this fraction of "
                                                                       "the images is registered."),
    threads: int = typer.Option(-1, "--threads", help="CPU threads for COLMAP (-1: all; 1: the same result "
                                                      "from run to run, slower)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Compute the poses again when sparse/0 exists."),
) -> None:
    """Estimate camera poses of photos or a video with COLMAP (pycolmap; no system install).

    Writes a COLMAP dataset (images/ and sparse/0) that `mip360 preprocess`
    reads as it is. Needs pycolmap: pip install "mip360cli\\[poses]".
    """
    from .data.poses import PosesOptions, compute_poses

    opts = PosesOptions(fps=fps, keep=keep, max_size=max_size, matcher=matcher, overlap=overlap,
                        camera_model=camera_model.upper(), camera_mode=camera, min_registered=min_registered,
                        threads=threads, overwrite=overwrite)
    r = compute_poses(source, out, opts)
    if r.status != "computed":
        typer.echo(f"dataset    {r.data} already has poses ({r.data / 'sparse' / '0'}); --overwrite to compute "
                   "them again")
    else:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in r.seconds.items())
        typer.echo(f"dataset    {r.data} (images/ and sparse/0)")
        typer.echo(f"registered {r.registered} / {r.images} images ({100 * r.registered / r.images:.0f}%)"
                   + (f"; {r.dropped_blurry} blurry ones dropped before" if r.dropped_blurry else ""))
        typer.echo(f"error      {r.reprojection_error:.3f} px mean reprojection, {r.points:,} points")
        typer.echo(f"matching   {r.matcher}")
        typer.echo(f"time       {sum(r.seconds.values()):.1f} s ({stages})")
    typer.echo(f"next: mip360 preprocess {r.data}")


@app.command("preprocess")
def preprocess_cmd(
    data: Path = typer.Argument(..., help="Dataset folder (COLMAP, LLFF, transforms.json or EasyMocap)."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help=OVERRIDES_HELP,
                                                    show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Cache file (default: DATA/mip360_cache.h5)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    format: Optional[str] = typer.Option(None, "--format", "-f",
                                         help="auto | colmap | llff | transforms | easymocap (default: auto)"),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Image scale factor, e.g. 0.5 (default: 1)."),
    frame_interval: Optional[int] = typer.Option(None, "--frame-interval", help="Keep every k-th image."),
    test_every: Optional[int] = typer.Option(None, "--test-every",
                                             help="Hold out every n-th image; 0 = none (default: 8)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Image-decoding threads (default: 4)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache is up to date."),
) -> None:
    """Build the HDF5 ray cache of a dataset (streaming, bounded memory).

    Re-running with unchanged inputs is instant. Options not given keep the
    values the existing cache was built with (so `train DATA` uses what
    preprocess built); options given that differ, or images and camera files
    whose content changed, rebuild the cache and the changes are listed.
    Frames whose image is missing are skipped with a warning.
    """
    from .config import explicit_keys, load_config, save_config
    from .data.cache import build_cache, default_cache_path

    flags = {"data.format": format, "data.ratio": ratio, "data.frame_interval": frame_interval,
             "data.test_every": test_every, "cache.workers": workers, "cache.path": str(out) if out else None}
    cfg = load_config(config, overrides or [], flags)
    path = default_cache_path(data, cfg.cache)
    s = build_cache(data, cfg.data, cfg.cache, out=path, force=force, explicit=explicit_keys(overrides or [], flags))
    cfg.data, cfg.cache = s.data, s.cache
    save_config(cfg, path.with_name(path.stem + ".config.yaml"))
    typer.echo(f"cache      {s.path} ({s.status})")
    typer.echo(f"format     {s.source}")
    typer.echo(f"options    ratio {s.data.ratio}, frame_interval {s.data.frame_interval}, "
               f"test_every {s.data.test_every}")
    typer.echo(f"images     {s.images} ({s.train_images} train, {s.test_images} test)")
    typer.echo(f"rays       {s.rays:,} ({s.bytes_per_ray:.2f} bytes/ray, {s.bytes / 2**20:,.1f} MiB)")
    typer.echo(f"time       {s.seconds:.1f} s")


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    data: Path = typer.Argument(..., help="A ray cache (.h5) or a dataset folder (its cache is built first)."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help=OVERRIDES_HELP,
                                                    show_default=False),
    run: Optional[Path] = typer.Option(None, "--run", "-r", help="Run folder (default: runs/<DATA name>)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: auto)."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Processes on this machine (one per GPU; CPU processes "
                                                      "with gloo when there is no GPU)."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines taking part (multi-machine training)."),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", help="This machine's rank (0..nnodes-1)."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint",
                                                help="HOST:PORT every machine can reach, for the rendezvous."),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0,
                                     help="Restart all processes this often after a failure (elastic; "
                                          "each restart resumes from the last checkpoint)."),
    restart: bool = typer.Option(False, "--restart", help="Discard the run's checkpoints and start over."),
    time_budget: Optional[str] = typer.Option(None, "--time", help="Train for this long (2h, 90m, 1h30m) instead "
                                              "of train.max_steps: the step rate is measured first, then the "
                                              "steps are planned to end in time with the whole learning-rate "
                                              "schedule (train.time_budget)."),
    viewer: bool = typer.Option(False, "--viewer", help="Serve the web viewer (as `mip360 view`) from the "
                                                        "first process while training; it renders between steps, "
                                                        "in at most ~8% of the time."),
    viewer_host: str = typer.Option("127.0.0.1", "--viewer-host", help="The viewer's address (other than "
                                                                       "127.0.0.1: anyone who reaches it sees "
                                                                       "the scene)."),
    viewer_port: int = typer.Option(7007, "--viewer-port", help="The viewer's port."),
) -> None:
    """Train a Mip-NeRF 360 model; running it again resumes from the last checkpoint.

    Given a dataset folder, the cache `mip360 preprocess` built there is used
    with its options (ratio, split, ...); data options given on this command
    line that differ rebuild it, and say so.

    With --gpus N (or --nnodes) the command re-launches itself through
    torch.distributed.run: DDP with NCCL on GPUs, gloo on CPUs.

    For real captures: model.appearance.dim=4 (exposure changing between photos),
    train.refine_cameras=true (imperfect poses), model.encoding.integrated=true
    (the paper's anti-aliased encoding); masks/ beside images/ are used when there.
    """
    from .config import explicit_keys, load_config
    from .core import distributed
    from .runs.checkpoints import remove_checkpoints
    from .train.loop import check_buckets, default_run, train
    from .view.server import ViewerHook

    cfg = load_config(config, overrides or [], {"train.device": device, "train.time_budget": time_budget})
    explicit = explicit_keys(overrides or [])
    run = run or default_run(data)
    if (gpus > 1 or nnodes > 1) and not distributed.launched_by_torchrun():
        distributed.check_processes(gpus, device)
        check_buckets(data, cfg, explicit, gpus * nnodes)
        if restart:  # once, here: an elastic restart of the workers must resume, not start over
            remove_checkpoints(run)
        _relaunch(ctx, gpus, "training", "fix the problem, then run the same command again to resume",
                  nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts)
        return
    hooks = [ViewerHook(viewer_host, viewer_port)] if viewer else []
    s = train(data, run, cfg, restart=restart, explicit=explicit, hooks=hooks)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"run        {s.run}")
        typer.echo(f"steps      {s.step} (resumed from {s.resumed_from})")
        typer.echo(f"train PSNR {s.last_psnr:.2f} dB (last batch)")
        if s.val_psnr is not None:
            typer.echo(f"val PSNR   {s.val_psnr:.2f} dB (held-out view 0)")
        if s.nonfinite_steps:
            typer.echo(f"skipped    {s.nonfinite_steps} non-finite steps")


@app.command("render")
def render_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="A run folder made by `mip360 train`."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help=RENDER_ALIASES_HELP,
                                                    show_default=False),
    path: str = typer.Option("ellipse", "--path", "-p",
                             help="ellipse | spiral | interp | test | train | a camera-path .json file."),
    frames: int = typer.Option(120, "--frames", "-n", min=1, help="Frames of a generated path."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Image scale against the original photos "
                                                                "(default: the training ratio)."),
    depth: Optional[str] = typer.Option(None, "--depth", help="none | mean | median (default: median)."),
    video: bool = typer.Option(True, "--video/--no-video", help="Write mp4 videos (RGB, depth, side by side)."),
    fps: float = typer.Option(30.0, "--fps", help="Video frame rate."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: RUN/renders/<path>)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A checkpoint file (default: latest)."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Processes splitting the frames (torch.distributed.run)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Render frames already on disk again."),
    appearance: str = typer.Option("mean", "--appearance", help="A run trained with appearance codes "
                                   "(model.appearance.dim): mean, or the name of a training image whose exposure "
                                   "and colour to render with."),
) -> None:
    """Render novel views: RGB frames, mean or median depth (.npy + colormap) and mp4 videos.

    Frames already written are skipped, so an interrupted render resumes.
    """
    from .config import parse_render_args
    from .core import distributed
    from .render.frames import RenderOptions, render_path
    from .runs.load import load_run

    args = parse_render_args(overrides or [], ratio, depth)
    opts = RenderOptions(path, frames, args.ratio, args.depth or "median", video, fps, out, overwrite, appearance)
    opts.check()
    if gpus > 1 and not distributed.launched_by_torchrun():
        distributed.check_processes(gpus, device)
        _relaunch(ctx, gpus, "rendering", "run the same command again: frames already written are kept")
        return
    loaded = load_run(run, checkpoint, device, args.render)
    env = distributed.init(loaded.device.type)
    try:
        result = render_path(loaded, opts, env)
    finally:
        distributed.shutdown(env)
    if result:
        typer.echo(f"frames     {result['frames']} in {result['out']}")
        for v in result.get("videos", []):
            typer.echo(f"video      {v}")


@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="A run folder made by `mip360 train`."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help=RENDER_KEYS_HELP,
                                                    show_default=False),
    split: Optional[str] = typer.Option(None, "--split", help="test (held-out views) | train "
                                                              "(default: eval.split of the run, test)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Image scale against the original photos "
                                                                "(default: the training ratio)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A checkpoint file (default: latest)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
) -> None:
    """Score the held-out views: PSNR, SSIM and LPIPS per image and their mean, and how they were made (RUN/eval/).

    By default renders are rounded to 8 bits and LPIPS uses AlexNet, as the published tables; the
    record says whether the scores compare with the Mip-NeRF 360 protocol, and if not, why.
    """
    from rich.console import Console
    from rich.table import Table

    from .config import parse_render_args
    from .eval.evaluate import evaluate
    from .eval.report import protocol_lines
    from .runs.load import load_run

    if split not in (None, "test", "train"):
        raise UserError(f"--split {split!r}: choose test or train")
    args = parse_render_args(overrides or [], ratio, command="eval")
    loaded = load_run(run, checkpoint, device, args.render)
    split = split or loaded.cfg.eval.split
    result = evaluate(loaded, split, args.ratio)
    lpips = result["mean"]["lpips"] is not None
    table = Table(title=f"{run} · step {result['step']} · {split} · ratio {result['ratio']}")
    for col in ("view", "PSNR (dB)", "SSIM", *(["LPIPS"] if lpips else [])):
        table.add_column(col, justify="right" if col != "view" else "left")
    for r in [*result["per_image"], {**result["mean"], "name": "[bold]mean"}]:
        table.add_row(r["name"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", *([f"{r['lpips']:.4f}"] if lpips else []))
    Console().print(table)  # the scores are the command's output: stdout
    for line in protocol_lines(result):
        typer.echo(line)
    typer.echo(f"wrote {loaded.folder.eval / 'metrics.json'}, per_image.csv and images/")


@app.command("compare")
def compare_cmd(
    runs: List[Path] = typer.Argument(..., help="Run folders, each scored by `mip360 eval`."),
    out: Path = typer.Option(Path("mip360-compare"), "--out", "-o", help="Folder for the image strips."),
    views: int = typer.Option(3, "--views", help="Strips of the held-out views where the runs differ most "
                                                 "(0: none)."),
    csv: bool = typer.Option(False, "--csv", help="Print the table as CSV."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown."),
    mixed: bool = typer.Option(False, "--mixed", help="Show runs scored differently (other images, float "
                                                      "scoring, other views or ratio) side by side, flagged."),
) -> None:
    """Runs side by side: mean PSNR / SSIM / LPIPS, steps, training time, rays/s, model size, and image strips
    (photo | each run | each run's error) of the views where they differ most.

    Runs scored under different protocols are refused unless --mixed.
    """
    from rich.console import Console
    from rich.table import Table

    from .eval.compare import COLUMNS, cell, compare, table_text

    if not 0 <= views <= 1000 or (csv and markdown):
        raise UserError("--views must be from 0 to 1000, and --csv and --markdown go one at a time")
    rows, diffs, strips = compare(runs, out, views, mixed)
    if csv or markdown:
        typer.echo(table_text(rows, "csv" if csv else "markdown"), nl=False)
    else:
        table = Table()
        for col in COLUMNS:
            table.add_column(col, justify="left" if col == "run" else "right")
        for r in rows:
            table.add_row(*(cell(c, r[c]) for c in COLUMNS))
        Console().print(table)
    if diffs:
        console.print(f"[yellow]scored differently:[/yellow] {', '.join(diffs)} (shown because of --mixed)")
    for p in strips:
        console.print(f"strip      {p}")


@app.command("view")
def view_cmd(
    run: Path = typer.Argument(..., help="A run folder made by `mip360 train` (it may still be training)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Other than 127.0.0.1, anyone "
                                                         "who reaches the port sees the scene and drives the "
                                                         "renderer (prefer an SSH tunnel)."),
    port: int = typer.Option(7007, "--port", help="Port of the web page."),
    budget_ms: int = typer.Option(100, "--budget-ms", help="Time for a frame while the camera moves (its size "
                                                           "follows); a still view is refined to full size."),
    max_res: int = typer.Option(1024, "--max-res", help="Longest side of a still frame."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Rays rendered at once (at most 4096) [default: "
                                                                 "the run's render.chunk_rays]."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A checkpoint file (default: the latest, "
                                                                         "reloaded as new ones appear)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    show: Optional[List[Path]] = typer.Option(None, "--show", help="Also draw this mesh or point cloud (PLY, GLB, "
                                              "OBJ; e.g. RUN/export/mesh.ply) over the scene, to see what an "
                                              "export holds (repeatable)."),
) -> None:
    """Fly through a run in the browser (viser): training cameras, RGB and depth, camera paths.

    Renders the model from the browser's camera (quick frames while it moves,
    full size when it stops), shows the training cameras with their photos,
    reloads the newest checkpoint as training writes it, and draws camera paths
    (keyframes -> RUN/camera_paths/*.json for `mip360 render --path`). Stop
    with Ctrl-C.
    """
    import time

    from .runs.load import load_run
    from .view.server import check_view_options, serve_run

    check_view_options(host, port, budget_ms, max_res, chunk)
    loaded = load_run(run, checkpoint, device)
    shown = []
    if show:
        from .export.mesh import read_geometry

        shown = [(p.name, read_geometry(p, loaded.transform)) for p in show]
    viewer = serve_run(loaded, host, port, budget_ms, max_res, chunk, follow_checkpoints=checkpoint is None)
    for name, geometry in shown:
        viewer.show_geometry(name, geometry)
    console.print(f"viewer of {run} (step {loaded.step}) at [bold]{viewer.url}[/bold]  (Ctrl-C to stop)",
                  soft_wrap=True)
    try:
        while True:
            time.sleep(1.0)
    finally:
        viewer.close()


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="A run folder made by `mip360 train`."),
    overrides: Optional[List[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help=RENDER_KEYS_HELP,
                                                    show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The file to write (default: "
                                       "RUN/export/points.ply, or RUN/export/mesh.ply with --mesh)."),
    points: int = typer.Option(1_000_000, "--points", "-n", help="At most this many points (a random subset)."),
    split: str = typer.Option("train", "--split", help="Views to take depth from: train | test | all."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Image scale against the original photos "
                                                                "(default: the training ratio)."),
    min_opacity: float = typer.Option(0.9, "--min-opacity", help="Keep pixels whose accumulated opacity is "
                                                                 "at least this."),
    tolerance: float = typer.Option(0.01, "--tolerance", help="Relative depth difference under which a "
                                                              "neighbouring view agrees with a point."),
    neighbours: int = typer.Option(4, "--neighbours", help="Nearest views each point is checked in."),
    min_views: Optional[int] = typer.Option(None, "--min-views", help="Floaters: keep only what at least this "
                                            "many views see at the same depth (the view itself and its "
                                            "--neighbours; for a mesh also views fused per voxel). Default 2; "
                                            "1: no check."),
    min_agree: Optional[int] = typer.Option(None, "--min-agree", hidden=True,
                                            help="The older spelling of --min-views N+1."),
    bound: float = typer.Option(1.0, "--bound", help="Keep points within this distance (max-norm) of the "
                                                     "normalized scene's center; 1 = the cameras' box, beyond "
                                                     "which the scene is contracted; 0 = no limit (points only)."),
    normals: bool = typer.Option(False, "--normals", help="Normals from the depth maps (else the PLY's "
                                                          "normal fields are 0)."),
    normalized: bool = typer.Option(False, "--normalized", help="Output in the normalized scene instead of "
                                                                "the input data's world coordinates."),
    mesh: bool = typer.Option(False, "--mesh", help="Export a mesh instead of points: the views' depth fused "
                                                    "into a TSDF, marching cubes, vertex colours."),
    resolution: int = typer.Option(512, "--resolution", help="--mesh: voxels along the longest side of the "
                                                             "fused surface's box."),
    truncation: float = typer.Option(4.0, "--truncation", help="--mesh: half width of the band fused around "
                                                                "each view's surface, in voxels."),
    components: int = typer.Option(0, "--components", help="--mesh: keep the largest this many connected "
                                                           "pieces (0: all)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="--mesh: ply | glb | obj (default: from --out's "
                                                             "suffix, else ply)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A checkpoint file (default: latest)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
) -> None:
    """Export a coloured point cloud (binary PLY), or with --mesh a mesh, from the median depth of the
    training views.

    Output is in the input data's own world coordinates and units (it lies on
    its COLMAP model). Points have x, y, z, nx, ny, nz, red, green, blue: the
    layout 3D Gaussian splatting (gsplat, splatfacto) initializes from. A mesh
    (PLY, or GLB/OBJ for Blender and the web) has vertex colours; what fewer
    than --min-views views confirm is dropped as a floater, and counted.
    """
    from .config import parse_render_args
    from .core.errors import UserError
    from .runs.load import load_run

    if min_views is not None and min_agree is not None:
        raise UserError("give --min-views or --min-agree, not both (--min-agree N is --min-views N+1)")
    views_needed = min_views if min_views is not None else (min_agree + 1 if min_agree is not None else 2)
    args = parse_render_args(overrides or [], ratio, command="export")
    if mesh:
        from .export.mesh import MESH_FORMATS, MeshOptions, export_mesh

        if fmt is not None and fmt not in MESH_FORMATS:
            raise UserError(f"--format {fmt!r}: choose {', '.join(MESH_FORMATS)}")
        suffix = out.suffix.lower().lstrip(".") if out is not None else ""
        chosen = fmt or (suffix if suffix in MESH_FORMATS else "ply")
        if out is not None and suffix in MESH_FORMATS and suffix != chosen:
            raise UserError(f"--out {out} ends in .{suffix} but --format is {chosen}",
                            hint=f"name the file .{chosen}, or drop --format")
        opts = MeshOptions(split=split, ratio=args.ratio, min_opacity=min_opacity, tolerance=tolerance,
                           neighbours=neighbours, bound=bound, normalized=normalized, resolution=resolution,
                           truncation=truncation, min_views=views_needed, components=components, format=chosen)
        opts.check()
        loaded = load_run(run, checkpoint, device, args.render)
        summary = export_mesh(loaded, out or loaded.folder.export / f"mesh.{chosen}", opts)
        typer.echo(f"mesh       {summary.vertices:,} vertices, {summary.faces:,} faces in {summary.path} "
                   f"({summary.frame})")
        return
    from .export.points import PointOptions, export_points

    if fmt is not None:
        raise UserError("--format is for --mesh: points are written as PLY")
    opts = PointOptions(split=split, ratio=args.ratio, min_opacity=min_opacity, tolerance=tolerance,
                        neighbours=neighbours, bound=bound, normalized=normalized, points=points,
                        min_agree=views_needed - 1, normals=normals)
    opts.check()
    loaded = load_run(run, checkpoint, device, args.render)
    summary = export_points(loaded, out or loaded.folder.export / "points.ply", opts)
    typer.echo(f"points     {summary.points:,} in {summary.path} ({summary.frame})")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Argument(Path("mip360-demo"), help="Folder for the scene, cache and run."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the tiny preset's 1000)."),
    size: str = typer.Option("64x48", "--size", help="Example image size WxH."),
    frames: int = typer.Option(60, "--frames", help="Frames of the orbit video."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
) -> None:
    """The whole pipeline on the example scene: example, preprocess, train (tiny), render, eval."""
    from .demo import DemoOptions, run_demo

    width, height = _parse_size(size)
    r = run_demo(DemoOptions(out, steps, width, height, frames, device))
    typer.echo(f"scene      {r.scene}")
    typer.echo(f"run        {r.run} ({r.steps} steps)")
    typer.echo(f"video      {r.video}")
    typer.echo(f"eval       {r.run / 'eval'}  PSNR {r.psnr:.2f} dB, SSIM {r.ssim:.4f}"
               + (f", LPIPS {r.lpips:.4f}" if r.lpips is not None else ""))


checkpoint_app = typer.Typer(help="Checkpoints: convert one written by an earlier version or another tool.",
                             no_args_is_help=True)
app.add_typer(checkpoint_app, name="checkpoint")


@checkpoint_app.command("upgrade")
def checkpoint_upgrade_cmd(
    path: Path = typer.Argument(..., help="A checkpoint file, or a run folder (all its checkpoints)."),
    trust: bool = typer.Option(False, "--trust", help="Confirm that you trust where the file comes from: "
                                                      "converting it unpickles it, which can run code."),
) -> None:
    """Rewrite checkpoints as tensors and plain values (read without running code).

    mip360 reads checkpoints with torch.load(weights_only=True) and refuses
    any holding other objects: a crafted one could run code when unpickled.
    This converts checkpoints you trust, in place and atomically (numpy
    values become tensors and numbers, paths become strings).
    """
    from .runs.checkpoints import upgrade_all

    for f, status in upgrade_all(path, trust):
        typer.echo(f"{status:<14} {f}")


def _relaunch(ctx: typer.Context, gpus: int, what: str, hint: str, **kwargs) -> None:
    """Run this command line again under torch.distributed.run with ``gpus`` processes per machine.

    The processes get the same arguments (their ``--gpus`` is then ignored), less ``--restart``,
    which the launcher has done once: an elastic restart of the processes must resume.
    """
    from .core import distributed

    argv = [a for a in ctx.obj["argv"] if a != "--restart"] + (["--debug"] if ctx.obj["debug"] else [])
    code = distributed.relaunch(argv, gpus, **kwargs)
    if code != 0:
        raise UserError(f"{what} stopped: a process exited with code {code} (its message is above)", hint=hint)


def _strip_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``--debug`` is accepted anywhere on the line."""
    return [a for a in argv if a != "--debug"], "--debug" in argv


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: run the CLI, turning errors into one message and an exit code.

    Usage errors and ``--help`` are handled by Typer (standalone mode, exit code 2
    and 0); a :class:`UserError` becomes ``error: ...`` and exit code 1; anything
    else an "internal error" line. ``--debug`` (anywhere) shows the traceback.
    """
    prefer_short_spin()  # before torch is imported: OpenMP threads that do not spin on a busy machine
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupt_on_ctrl_c) if in_main else None  # Ctrl-C: one line, 130
    try:
        return _run(argv)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def _run(argv: Optional[List[str]]) -> int:
    if argv is None:
        # A process started by torch.distributed.run gets its arguments from the environment.
        launched = os.environ.get("MIP360_TORCHRUN_ARGV") if "LOCAL_RANK" in os.environ else None
        argv = json.loads(launched) if launched else sys.argv[1:]
    argv, debug = _strip_debug(list(argv))
    try:
        app(args=argv, prog_name="mip360", obj={"debug": debug, "argv": argv})
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Interrupted as e:  # Ctrl-C or SIGTERM: what was kept and what to do next
        console.print(escape(str(e)), soft_wrap=True)
        return 130 if e.signum == signal.SIGINT else 143
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: finished work is kept; run the same command to go on")
        return 130
    except UserError as e:
        if debug:
            raise
        console.print(f"[bold red]error:[/bold red] {escape(str(e))}", soft_wrap=True)
        return 1
    except Exception as e:  # noqa: BLE001 - the last line of defence for users
        if debug:
            raise
        console.print(f"[bold red]internal error:[/bold red] {type(e).__name__}: {escape(str(e))}",
                      soft_wrap=True)
        console.print("run again with --debug for the traceback, and please report it")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
