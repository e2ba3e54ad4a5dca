"""Photos or a video to a COLMAP dataset, with pycolmap (``mip360 poses``).

pycolmap is a pip package that bundles COLMAP, so nothing is installed on the
system. The steps, each with a progress bar:

1. frames: a video is sampled at ``fps`` through imageio-ffmpeg; photos are
   taken as they are. The blurriest are dropped (variance of the Laplacian,
   keeping the sharpest ``keep`` fraction). Photos stored turned (EXIF
   orientation) are written upright, since mip360 reads them upright.
2. SIFT features (``max_size`` bounds the side the features are found at).
3. matching: exhaustive for small sets, sequential (neighbours in name order,
   which is time order for a video) for long videos.
4. incremental mapping; the largest model is kept and written as
   ``DATA/sparse/0`` beside ``DATA/images/``, which ``mip360 preprocess`` reads.

Nothing is half-written: frames and the model go to temporary folders that are
renamed when complete, and a re-run picks up the frames of a finished step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ..core.errors import Interrupted, UserError
from ..core.files import MIB, atomic_write_text, files_below, read_json_bounded, refuse_foreign
from ..core.progress import format_duration, info, progress_bar, warn
from .images import IMAGE_EXTENSIONS, file_orientation, list_images, read_image

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts", ".3gp")
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")  # what mip360 reads
MATCHERS = ("auto", "exhaustive", "sequential")
CAMERA_MODES = ("auto", "single", "per-image")
FRAMES_MARKER = ".mip360_frames.json"
# Above this many images, auto matching of a video is sequential: exhaustive matching grows as n^2.
EXHAUSTIVE_LIMIT = 150
# TwoViewGeometry configurations that are verified geometry (COLMAP: 0 undefined, 1 degenerate, 7 watermark).
_VERIFIED = (2, 3, 4, 5, 6, 8)


@dataclass
class PosesOptions:
    """What ``mip360 poses`` does; the CLI's options, one to one."""

    fps: float = 2.0
    """Frames per second taken from a video."""
    keep: float | None = None
    """Fraction of the sharpest frames kept (default: 0.9 of a video's frames, all photos)."""
    max_size: int = 1600
    """Longest image side at which features are found."""
    matcher: str = "auto"
    overlap: int = 10
    """Sequential matching: each image is matched with this many next ones."""
    camera_model: str = "SIMPLE_RADIAL"
    camera_mode: str | None = None
    """auto (per image size and EXIF), single, per-image; default single for a video, auto for photos."""
    min_registered: float = 0.5
    """Error when the model holds fewer than this fraction of the images."""
    seed: int = 0
    threads: int = -1
    """CPU threads COLMAP uses (-1: all); 1 makes the result the same from run to run."""
    overwrite: bool = False


@dataclass
class PosesResult:
    data: Path
    images: int
    registered: int
    reprojection_error: float
    points: int
    matcher: str
    dropped_blurry: int
    seconds: dict[str, float] = field(default_factory=dict)
    status: str = "computed"  # or "already there"


def require_pycolmap():
    """The pycolmap module, or a UserError that says how to install it."""
    try:
        import pycolmap
    except ImportError:
        raise UserError("mip360 poses needs pycolmap, which is not installed",
                        hint='pip install "mip360cli[poses]"  (pycolmap bundles COLMAP: no system install)') from None
    return pycolmap


def default_output(source: Path) -> Path:
    """Where the dataset goes when ``--out`` is not given.

    A video ``garden.mp4`` -> ``garden/``; a dataset folder with ``images/`` -> itself;
    a folder of photos named ``images`` -> its parent; any other folder of photos
    ``photos/`` -> ``photos-mip360/`` beside it (the photos are never moved).
    """
    if source.is_file():
        return source.with_suffix("")
    if (source / "images").is_dir():
        return source
    if source.name == "images":
        return source.parent
    return source.with_name(source.name + "-mip360")


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the image's grey levels, at a longest side of 640 at most.

    Larger is sharper. Computed at a fixed scale so that frames of one capture compare fairly.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = 640 / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, (round(grey.shape[1] * scale), round(grey.shape[0] * scale)),
                          interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def blurriest(scores: list[float], keep: float, spread: bool = False) -> set[int]:
    """Indices of the ``1 - keep`` fraction of frames with the lowest sharpness (ties: the later ones).

    ``spread`` (a video's frames, in time order): the sequence is cut into as many
    runs of consecutive frames as frames to drop, and the blurriest of each run is
    dropped, so that no stretch of the path loses several neighbouring views (gaps
    weaken the reconstruction: on a 40-frame ring with 4 frames dropped, the mean
    pose error was 0.56 degrees with two neighbours among them, 0.19 spread).
    """
    n_drop = max(0, len(scores) - max(1, int(round(keep * len(scores)))))
    if n_drop == 0:
        return set()
    if spread:
        runs = np.array_split(np.arange(len(scores)), n_drop)
        return {int(max(run, key=lambda i: (-scores[i], i))) for run in runs}
    order = sorted(range(len(scores)), key=lambda i: (scores[i], -i))
    return set(order[:n_drop])


def video_frames(video: Path, fps: float) -> tuple[Iterator[np.ndarray], int]:
    """Frames of ``video`` sampled at ``fps``: an iterator of (H, W, 3) uint8 RGB, and their expected count."""
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(video), output_params=["-vf", f"fps={fps}"])
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as e:
        raise UserError(f"cannot read the video {video}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}",
                        hint="check that the file is a complete video (mp4, mov, ...)") from None
    width, height = meta["size"]
    expected = max(1, int(round(float(meta.get("duration") or 0) * fps)))

    def frames() -> Iterator[np.ndarray]:
        try:
            for raw in gen:
                yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        finally:
            gen.close()

    return frames(), expected


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def gather_images(source: Path, data: Path, opts: PosesOptions) -> tuple[list[str], int]:
    """Put the images to pose in ``data/images``; return (their names, how many blurry ones were dropped).

    A dataset folder's own ``images/`` are used in place (the blurriest are left
    out of the model, never deleted); a video's frames and a folder's photos are
    written to ``data/images`` through a temporary folder renamed when complete.
    """
    images = data / "images"
    photos = source / "images" if (source / "images").is_dir() else source
    if source.is_dir() and images.is_dir() and images.resolve() == photos.resolve():
        files = list_images(images)  # in place
        if not files:
            raise UserError(f"{images} holds no images", hint=f"image files end in {', '.join(IMAGE_EXTENSIONS)}")
        turned = [p.name for p in files if file_orientation(p) != 1]
        if turned:
            raise UserError(f"{len(turned)} photos in {images} are stored turned (EXIF orientation), e.g. "
                            f"{', '.join(turned[:3])}; COLMAP would see them sideways",
                            hint=f"let mip360 write upright copies: mip360 poses {images} --out NEW_FOLDER")
        keep = 1.0 if opts.keep is None else opts.keep
        scores = _scores(files, keep)
        dropped = blurriest(scores, keep) if scores else set()
        return [p.name for i, p in enumerate(files) if i not in dropped], len(dropped)
    marker = images / FRAMES_MARKER
    wanted = _source_record(source, opts)
    if images.is_dir() and any(images.iterdir()):
        done = json.loads(marker.read_text()) if marker.exists() else {}
        if done.get("source") == wanted:  # a finished step of an earlier run with the same source and options
            info(f"the images of {source.name} are already in {images} ({len(done['names'])} kept)")
            return done["names"], int(done["dropped"])
        raise UserError(f"{images} already holds other images",
                        hint="give another output folder (--out), or remove that folder")
    tmp = data / ".images.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # a killed earlier run
    tmp.mkdir(parents=True)
    try:
        if source.is_file():
            names, scores = _write_video_frames(source, tmp, opts.fps)
            keep = 0.9 if opts.keep is None else opts.keep
        else:
            names, scores = _write_photos(photos, tmp)
            keep = 1.0 if opts.keep is None else opts.keep
        dropped = blurriest(scores, keep, spread=source.is_file())
        for i in sorted(dropped):
            (tmp / names[i]).unlink()
        kept = [n for i, n in enumerate(names) if i not in dropped]
        (tmp / FRAMES_MARKER).write_text(json.dumps({"source": wanted, "names": kept, "dropped": len(dropped)}))
        if images.exists():
            images.rmdir()  # empty, checked above
        os.replace(tmp, images)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return kept, len(dropped)


def _source_record(source: Path, opts: PosesOptions) -> dict:
    st = source.stat()
    record = {"path": str(source.resolve()), "keep": opts.keep}
    if source.is_file():
        record.update(size=st.st_size, mtime_ns=st.st_mtime_ns, fps=opts.fps)
    return record


def _scores(files: list[Path], keep: float) -> list[float]:
    if keep >= 1:
        return []
    scores = []
    with progress_bar("scoring sharpness", len(files), "images") as bar:
        for p in files:
            scores.append(sharpness(read_image(p)))
            bar.advance()
    return scores


def _write_video_frames(video: Path, out: Path, fps: float) -> tuple[list[str], list[float]]:
    frames, expected = video_frames(video, fps)
    names, scores = [], []
    with progress_bar("extracting frames", expected, "frames") as bar:
        for i, rgb in enumerate(frames):
            name = f"frame_{i + 1:05d}.jpg"
            if not cv2.imwrite(str(out / name), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise UserError(f"cannot write {out / name}", hint="check the free disk space")
            names.append(name)
            scores.append(sharpness(rgb))
            bar.advance()
    if len(names) < 3:
        raise UserError(f"{video} gave {len(names)} frame(s) at --fps {fps}",
                        hint="use a higher --fps or a longer video: poses need many overlapping views")
    return names, scores


def _write_photos(folder: Path, out: Path) -> tuple[list[str], list[float]]:
    files = list_images(folder)
    if not files:
        raise UserError(f"{folder} holds no images", hint=f"image files end in {', '.join(IMAGE_EXTENSIONS)}")
    names, scores = [], []
    with progress_bar("reading photos", len(files), "photos") as bar:
        for p in files:
            rgb = read_image(p)
            if file_orientation(p) != 1:  # COLMAP reads the stored pixels: give it the upright photo
                name = p.stem + ".png"
                cv2.imwrite(str(out / name), rgb[:, :, ::-1])
            else:
                name = p.name
                _link_or_copy(p, out / name)
            names.append(name)
            scores.append(sharpness(rgb))
            bar.advance()
    return names, scores


# ----------------------------------------------------------------------------- pycolmap with progress


def _count(db: Path, sql: str) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)) as c:
            return int(c.execute(sql).fetchone()[0])
    except sqlite3.Error:  # not created yet, or busy: try again at the next poll
        return 0


def _stage(name: str, kwargs: dict, counter, errors, elapsed) -> None:
    """One pycolmap step, in a child process (see :func:`_run_stage`)."""
    import signal

    import pycolmap

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends this process
    pycolmap.logging.minloglevel = 2  # warnings and errors only: the parent shows the progress
    pycolmap.set_random_seed(kwargs.pop("seed"))
    threads = kwargs.pop("threads")
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    started = time.perf_counter()
    try:
        if name == "features":
            reader = pycolmap.ImageReaderOptions()
            reader.camera_model = kwargs.pop("camera_model")
            extraction = pycolmap.FeatureExtractionOptions()
            extraction.max_image_size = kwargs.pop("max_size")
            extraction.num_threads = threads
            mode = getattr(pycolmap.CameraMode, kwargs.pop("camera_mode"))
            pycolmap.extract_features(kwargs["db"], kwargs["images"], image_names=kwargs["names"], camera_mode=mode,
                                      reader_options=reader, extraction_options=extraction,
                                      device=pycolmap.Device.cpu)
        elif name == "exhaustive":
            pycolmap.match_exhaustive(kwargs["db"], matching_options=matching, device=pycolmap.Device.cpu)
        elif name == "pairs":  # the pairs listed in a file (sequential matching, the plan's measurement)
            pairing = pycolmap.ImportedPairingOptions()
            pairing.match_list_path = kwargs["pairs"]
            pycolmap.match_image_pairs(kwargs["db"], matching_options=matching, pairing_options=pairing,
                                       device=pycolmap.Device.cpu)
        elif name == "mapping":
            options = pycolmap.IncrementalPipelineOptions()
            options.random_seed = kwargs["random_seed"]
            options.num_threads = threads

            def add(k: int) -> None:
                with counter.get_lock():
                    counter.value += k

            pycolmap.incremental_mapping(kwargs["db"], kwargs["images"], kwargs["out"], options=options,
                                         initial_image_pair_callback=lambda: add(2),
                                         next_image_callback=lambda: add(1))
    except Exception as e:  # noqa: BLE001 - reported by the parent as a clear message
        errors.put(f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None
    elapsed.value = time.perf_counter() - started


def _run_stage(name: str, kwargs: dict, description: str, total: int, unit: str,
               poll: Callable[[], int] | None, show: bool = True) -> float:
    """Run a pycolmap step in a child process while a progress bar follows it.

    A child process, because pycolmap bundles its own SQLite: reading the
    database from this process while pycolmap writes it would mix two SQLite
    libraries' locks in one process (which corrupts it). A crash of COLMAP or
    Ctrl-C ends only the child; either becomes one clear message. What the child wrote to the
    database stays (the next run goes on from it). Returns the seconds COLMAP itself took.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    counter, errors, elapsed = ctx.Value("l", 0), ctx.Queue(), ctx.Value("d", 0.0)
    child = ctx.Process(target=_stage, args=(name, kwargs, counter, errors, elapsed), daemon=True)
    with progress_bar(description, total, unit, quiet=not show) as bar:
        child.start()
        done = 0
        try:
            while child.is_alive():
                child.join(0.25)
                now = min(poll() if poll else counter.value, total)
                if now > done:
                    bar.advance(now - done)
                    done = now
        except (KeyboardInterrupt, Interrupted):
            child.kill()  # its work is thrown away; SIGTERM would make COLMAP print a crash report
            child.join()
            raise
        if child.exitcode == 0 and done < total:
            bar.advance(total - done)
    if child.exitcode != 0:
        message = errors.get(timeout=1) if not errors.empty() else (
            f"the process ended with {'signal ' + str(-child.exitcode) if child.exitcode < 0 else child.exitcode}")
        raise UserError(f"COLMAP failed while {description}: {message}",
                        hint="run again with --debug for details; a crash here is COLMAP's, please report it")
    return elapsed.value



def compute_poses(source: str | Path, out: str | Path | None = None, opts: PosesOptions | None = None
                  ) -> PosesResult:
    """Photos or a video -> ``DATA/images`` + ``DATA/sparse/0`` (see the module's docstring)."""
    opts = opts or PosesOptions()
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist", hint="give a video file or a folder of photos")
    if source.is_file() and source.suffix.lower() not in VIDEO_EXTENSIONS:
        raise UserError(f"{source} is not a video ({', '.join(VIDEO_EXTENSIONS)}) nor a folder of photos")
    _check_options(opts)
    data = Path(out) if out else default_output(source)
    model = data / "sparse" / "0"
    if model.is_dir() and any(model.iterdir()) and not opts.overwrite:
        return PosesResult(data, 0, 0, float("nan"), 0, "", 0, status="already there")
    require_pycolmap()
    created = not data.exists()
    data.mkdir(parents=True, exist_ok=True)
    try:
        return _compute(source, data, model, opts)
    except BaseException:
        if created and not any(data.iterdir()):  # nothing made: leave no empty folder behind
            data.rmdir()
        raise


def _compute(source: Path, data: Path, model: Path, opts: PosesOptions) -> PosesResult:
    seconds = {}
    t0 = time.perf_counter()
    names, dropped = gather_images(source, data, opts)
    seconds["frames"] = time.perf_counter() - t0
    n = len(names)
    if n < 3:
        raise UserError(f"only {n} image(s) to pose", hint="poses need many overlapping photos (dozens at least)")
    if dropped:
        info(f"dropped the {dropped} blurriest of {n + dropped} images (--keep {opts.keep or 0.9})")
    is_video = source.is_file()
    mode = opts.camera_mode or ("single" if is_video else "auto")
    features = {"names": names, "camera_model": opts.camera_model, "max_size": opts.max_size, "camera_mode": mode}
    work = ColmapWork(data / WORK_DIR, features)
    db = str(work.db)
    common = {"db": db, "seed": opts.seed, "threads": opts.threads}

    t = time.perf_counter()
    if work.done("features"):
        info(f"features: those of the previous run ({work.path}), same images and options")
    else:
        _run_stage("features", {**common, "images": str(data / "images"), "names": names,
                                "camera_model": opts.camera_model, "max_size": opts.max_size,
                                "camera_mode": {"auto": "AUTO", "single": "SINGLE", "per-image": "PER_IMAGE"}[mode]},
                   "finding features", n, "images", lambda: _count(db, "SELECT COUNT(*) FROM keypoints"))
        work.mark("features")
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    matcher, pairs = _plan_matching(work, names, is_video, opts, common)
    step = f"matching {matcher} {opts.overlap if matcher == 'sequential' else ''}".strip()
    if work.done(step):
        info(f"matching: the matches of the previous run ({work.path})")
    else:
        _match(work, matcher, pairs, common)
        work.mark(step)
    verified = _count(db, "SELECT COUNT(*) FROM two_view_geometries WHERE config IN "
                          f"({', '.join(map(str, _VERIFIED))})")
    seconds["matching"] = time.perf_counter() - t
    if verified == 0:
        raise UserError(f"no two of the {n} images could be matched",
                        hint="the views must overlap (neighbouring photos share most of the scene); try "
                             + ("--matcher exhaustive, " if matcher == "sequential" else "")
                             + "a larger --max-size, or more photos")
    t = time.perf_counter()
    best = _map(work, data, n, verified, matcher, opts, common)
    seconds["mapping"] = time.perf_counter() - t
    _write_model(best, data, model)
    return PosesResult(data, n, int(best.num_reg_images()), float(best.compute_mean_reprojection_error()),
                       int(best.num_points3D()), matcher, dropped, seconds)


def _map(work: "ColmapWork", data: Path, n: int, verified: int, matcher: str, opts: PosesOptions, common: dict):
    """Incremental mapping into the work folder; the largest model, checked to hold enough of the images."""
    sparse = work.path / "sparse"
    shutil.rmtree(sparse, ignore_errors=True)  # the work folder is mip360's: an earlier run's models
    sparse.mkdir()
    _run_stage("mapping", {**common, "images": str(data / "images"), "out": str(sparse),
                           "random_seed": opts.seed}, "mapping", n, "images", None)
    pycolmap = require_pycolmap()
    models = [pycolmap.Reconstruction(str(p)) for p in sorted(sparse.iterdir()) if p.is_dir()]
    if not models:
        raise UserError(f"COLMAP could not start a model from the {n} images ({verified} matched pairs)",
                        hint="more overlap between photos, sequential matching for a video "
                             "(--matcher sequential), or a lower --max-size for very large images")
    best = max(models, key=lambda r: r.num_reg_images())
    n_reg = int(best.num_reg_images())
    if n_reg < max(3, opts.min_registered * n):
        raise UserError(f"only {n_reg} of {n} images were registered (largest of {len(models)} model(s))",
                        hint="the capture needs more overlap between neighbouring views; try "
                             + ("--matcher exhaustive, " if matcher == "sequential" else
                                "--matcher sequential for a video, ")
                             + "a higher --fps, or lower --min-registered to keep the partial model")
    if n_reg < n:
        warn(f"{n - n_reg} of {n} images were not registered; they are left out of the model")
    return best


def _write_model(best, data: Path, model: Path) -> None:
    """``data/sparse/0`` from the model, atomically; an earlier one replaced only when mip360 made it."""
    if model.is_dir() and any(model.iterdir()) and not (model / MODEL_MARKER).exists():
        refuse_foreign(model, sorted(p.name for p in model.iterdir()), "it is a model mip360 did not make, "
                       "and --overwrite replaces only mip360's own", hint="move it away to compute the poses again")
    tmp = data / "sparse" / ".0.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    best.write(str(tmp))
    (tmp / MODEL_MARKER).write_text(json.dumps({"written by": "mip360 poses"}) + "\n")
    if model.exists():
        shutil.rmtree(model)
    os.replace(tmp, model)


# ----------------------------------------------------------------------------- matching: the plan and its pairs


WORK_DIR = ".mip360-colmap"
MODEL_MARKER = ".mip360_poses.json"
# auto picks exhaustive matching when it is estimated to take at most this long (or for few images)
EXHAUSTIVE_BUDGET_S = 15 * 60
CALIBRATION_PAIRS = 12


class ColmapWork:
    """``DATA/.mip360-colmap``: COLMAP's database and which steps it holds, kept between runs.

    A run killed in the middle (Ctrl-C) keeps its features and matches; the next run with the same
    images and feature options reuses them (COLMAP skips the images and pairs already in the
    database). Other images or options start a new database: the old one is mip360's to delete.
    """

    def __init__(self, path: Path, features: dict):
        self.path, self.db, self.record_path = path, path / "database.db", path / "record.json"
        if path.exists() and not self.record_path.is_file():  # not made by mip360 (an empty folder is fine)
            refuse_foreign(path, files_below(path, 1000) if path.is_dir() else [path.name],
                           "it is where mip360 keeps COLMAP's database", hint="move it away")
        record = self._read()
        if record.get("features") != features:
            if self.db.exists():
                info(f"COLMAP's database in {path} was made from other images or options: starting a new one")
            shutil.rmtree(path, ignore_errors=True)
            record = {"features": features, "done": []}
        self.record = record
        path.mkdir(parents=True, exist_ok=True)
        self._write()

    def _read(self) -> dict:
        if not self.record_path.is_file():
            return {}
        try:
            record = read_json_bounded(self.record_path, "COLMAP work record", 256 * MIB)
        except UserError:
            return {}
        return record if isinstance(record, dict) and isinstance(record.get("done"), list) else {}

    def _write(self) -> None:
        atomic_write_text(self.record_path, json.dumps(self.record) + "\n")

    def done(self, step: str) -> bool:
        return step in self.record["done"] and self.db.exists()

    def mark(self, step: str) -> None:
        self.record["done"].append(step)
        self._write()


def sequential_pairs(n: int, overlap: int) -> list[tuple[int, int]]:
    """Pairs of images (indices in capture order) for sequential matching with loop closure.

    Each image is matched with its ``overlap`` next ones, with the ones 2^k further on (a long capture
    is tied together), and the first ``overlap`` images with the last ones (a walk around a scene ends
    where it began). Returns sorted (i, j), i < j, without repeats.

    Example:
        >>> sequential_pairs(6, 1)
        [(0, 1), (0, 2), (0, 4), (0, 5), (1, 2), (1, 3), (1, 5), (2, 3), (2, 4), (3, 4), (3, 5), (4, 5)]
    """
    pairs = set()
    for i in range(n):
        for j in range(i + 1, min(n, i + overlap + 1)):
            pairs.add((i, j))
        step = 2 * overlap
        while i + step < n:
            pairs.add((i, i + step))
            step *= 2
    for i in range(min(overlap, n)):  # loop closure: the end of the capture with its start
        for j in range(max(i + 1, n - overlap), n):
            pairs.add((i, j))
    return sorted(pairs)


def names_in_capture_order(names: list[str]) -> bool:
    """Whether sorted file names follow the capture (IMG_0001.JPG, DSC07956.JPG, frame_00001.jpg): every
    name ends in a number, the numbers rise in name order, and most steps between them are small."""
    numbers = []
    for name in names:
        m = re.search(r"(\d+)\D*$", Path(name).stem)
        if m is None:
            return False
        numbers.append(int(m.group(1)))
    steps = np.diff(numbers)
    return len(numbers) > 1 and bool(np.all(steps > 0)) and float(np.median(steps)) <= 10


def choose_matcher(n: int, ordered: bool, is_video: bool, seconds_per_pair: float, overlap: int,
                   asked: str) -> tuple[str, list[str]]:
    """The matcher ``auto`` picks, and the lines of the plan that say why.

    Exhaustive matching when it fits in :data:`EXHAUSTIVE_BUDGET_S` at the measured rate (or the images
    are few), else sequential when the names follow the capture; a video of over 150 frames always
    matches sequentially.
    """
    exhaustive, sequential = n * (n - 1) // 2, len(sequential_pairs(n, overlap))
    cost = lambda pairs: format_duration(pairs * seconds_per_pair, estimate=True)  # noqa: E731
    lines = [f"exhaustive matching: {exhaustive:,} pairs, about {cost(exhaustive)}",
             f"sequential matching ({overlap} neighbours, loop closure): {sequential:,} pairs, about "
             f"{cost(sequential)}" + ("" if ordered else " (the names do not follow the capture)")]
    if asked != "auto":
        return asked, lines
    if is_video:
        return ("sequential" if n > EXHAUSTIVE_LIMIT else "exhaustive"), lines
    if exhaustive * seconds_per_pair <= EXHAUSTIVE_BUDGET_S or n <= 2 * overlap or not ordered:
        if not ordered and exhaustive * seconds_per_pair > EXHAUSTIVE_BUDGET_S:
            lines.append("to go faster: photos named in capture order match sequentially (--matcher sequential), "
                         "or fewer features with a lower --max-size")
        return "exhaustive", lines
    return "sequential", lines + ["(--matcher exhaustive to match every pair)"]


def _plan_matching(work: ColmapWork, names: list[str], is_video: bool, opts: PosesOptions, common: dict
                   ) -> tuple[str, list[tuple[int, int]] | None]:
    """Measure matching on a few neighbouring pairs, print the plan, and pick the matcher (and its pairs)."""
    n = len(names)
    rate = work.record.get("seconds_per_pair")
    if rate is None:
        first = [(i, i + 1) for i in range(min(CALIBRATION_PAIRS, n - 1))]  # any plan matches these
        rate = max(_match(work, "pairs", first, common, show=False) / len(first), 1e-4)
        work.record["seconds_per_pair"] = rate
        work.mark("calibrated")
    matcher, lines = choose_matcher(n, names_in_capture_order(names), is_video, rate, opts.overlap, opts.matcher)
    info(f"plan       {n} images, matching measured at {rate:.2f} s a pair here:")
    for line in lines:
        info(f"           {line}")
    info(f"matching   {matcher}")
    return matcher, (sequential_pairs(n, opts.overlap) if matcher == "sequential" else None)


def _match(work: ColmapWork, matcher: str, pairs: list[tuple[int, int]] | None, common: dict, show: bool = True
           ) -> float:
    """Match the images of the database: every pair, or the listed ones (indices into the names)."""
    names = work.record["features"]["names"]
    kwargs = dict(common)
    total = len(names) * (len(names) - 1) // 2
    if pairs is not None:
        listed = work.path / "pairs.txt"
        atomic_write_text(listed, "".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
        kwargs["pairs"], total = str(listed), len(pairs)
    return _run_stage("exhaustive" if pairs is None else "pairs", kwargs, f"matching ({matcher})", total, "pairs",
                      lambda: _count(work.db, "SELECT COUNT(*) FROM matches"), show=show)


def _check_options(opts: PosesOptions) -> None:
    checks = [
        (opts.fps > 0, f"--fps {opts.fps}: must be > 0"),
        (opts.keep is None or 0 < opts.keep <= 1, f"--keep {opts.keep}: must be in (0, 1]"),
        (opts.max_size >= 64, f"--max-size {opts.max_size}: must be >= 64 pixels"),
        (opts.matcher in MATCHERS, f"--matcher {opts.matcher}: choose {', '.join(MATCHERS)}"),
        (opts.overlap >= 1, f"--overlap {opts.overlap}: must be >= 1"),
        (opts.camera_model in CAMERA_MODELS, f"--camera-model {opts.camera_model}: choose "
                                             f"{', '.join(CAMERA_MODELS)} (the models mip360 reads)"),
        (opts.camera_mode in (None, *CAMERA_MODES), f"--camera {opts.camera_mode}: choose {', '.join(CAMERA_MODES)}"),
        (0 <= opts.min_registered <= 1, f"--min-registered {opts.min_registered}: must be in [0, 1]"),
        (opts.threads == -1 or opts.threads >= 1, f"--threads {opts.threads}: -1 (all) or >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
