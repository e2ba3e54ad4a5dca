"""A dataset folder turned into normalized, split, resized cameras.

``load_scene`` is the only place where a format reader, frame selection,
normalization, the test split and the ``ratio`` resize meet; the ray cache
stores its result and nothing downstream reads a format again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..core.errors import UserError
from .cameras import Cameras, check_intrinsics, check_poses, normalize_poses, split_indices
from .formats import read_cameras
from ..core.progress import warn
from .images import image_size
from .masks import find_masks, mask_candidates


@dataclass(frozen=True)
class Scene:
    """Cameras ready for the cache.

    Attributes:
        cameras: (N) normalized cameras at the output resolution (after ``ratio``).
        source_width, source_height: (N,) sizes the camera files describe (before ``ratio``).
        transform: (4, 4) input world -> normalized world (scale included).
        train, test: indices into ``cameras``.
        format: the format that was read.
        camera_files: the camera files that were read (for the fingerprint).
    """

    cameras: Cameras
    source_width: np.ndarray
    source_height: np.ndarray
    transform: np.ndarray
    train: np.ndarray
    test: np.ndarray
    format: str
    camera_files: tuple[Path, ...]
    image_source: dict | None = None
    """How the cached images were made (:func:`image_source`); None when the images were not checked."""
    masks: tuple[Path | None, ...] = ()
    """The mask of each camera's image (None: used whole); empty when the dataset has none."""

    @property
    def n_masks(self) -> int:
        return sum(m is not None for m in self.masks)

    def describe(self, root: Path) -> str:
        """``colmap (sparse/0/images.bin; images in images_4/)``: what was read, for the user."""

        def rel(p: Path) -> str:
            try:
                return str(Path(p).relative_to(root))
            except ValueError:
                return str(p)

        folders = sorted({rel(Path(p).parent) for p in self.cameras.image_paths})
        shown = ", ".join(f"{f}/" for f in folders[:2]) + (f" and {len(folders) - 2} more" if len(folders) > 2 else "")
        files = ", ".join(rel(p) for p in self.camera_files)
        return f"{self.format} ({files}; images in {shown})"


def load_scene(folder: str | Path, data: DataConfig, check_images: bool = True) -> Scene:
    """Read, validate, select, normalize, split and resize the cameras of ``folder``.

    Frames whose image file is missing are dropped with a warning (or refused
    with ``data.missing_images=error``) before anything else, so the split
    and the normalization see only the images that exist.

    Args:
        folder: dataset folder in any supported format.
        data: the ``data`` config section (format, ratio, frame_interval, test_every, missing_images).
        check_images: check that every image's header size matches the intrinsics (cheap: headers only).
    """
    folder = Path(folder)
    fmt, cams, files = read_cameras(folder, data.format, data.ratio, data.easymocap_frame)
    source = files[0] if files else folder
    # COLMAP lists its frames in images.bin|txt, beside cameras.bin|txt
    frames_file = next((f for f in files if f.stem == "images"), source)
    check_unique_frames(cams, frames_file)
    cams = drop_missing_images(cams, frames_file, data.missing_images)
    check_intrinsics(cams.K, cams.width, cams.height, cams.names, source)
    check_poses(cams.c2w, cams.names, frames_file)
    cams = cams.select(np.arange(0, len(cams), data.frame_interval))
    c2w, transform = normalize_cameras(cams, frames_file)
    source_w, source_h = cams.width.copy(), cams.height.copy()
    cams = cams.replace(c2w=c2w).scaled(data.ratio)
    source_info = None
    if check_images:
        width, height = cams.width.copy(), cams.height.copy()
        as_is = np.zeros(len(cams), bool)
        read = []
        for i in range(len(cams)):
            actual = image_size(cams.image_paths[i])
            read.append(actual)
            if check_image_size(cams.image_paths[i], actual, (int(source_w[i]), int(source_h[i])), data.ratio,
                                source):
                # Already downscaled (images_N), or full size at ratio 1: used as they are. An images_N file
                # keeps its exact size, a pixel off the rounded one at most, instead of being resampled by a pixel.
                width[i], height[i] = actual
                as_is[i] = True
        cams = cams.replace(width=width, height=height)
        source_info = image_source(folder, cams, as_is, read)
    train, test = split_indices(len(cams), data.test_every)
    if len(train) == 0:
        raise UserError(f"{folder}: no training images left ({len(cams)} images, test_every={data.test_every})",
                        hint="use more images, a smaller frame_interval, or test_every=0")
    masks = find_masks(folder, cams.image_paths) if data.masks == "auto" else ()
    if masks and all(m is None for m in masks):  # a masks/ folder whose names match no image
        where = mask_candidates(folder, cams.image_paths[0])
        warn(f"{folder / 'masks'} holds no mask of these images (that of {Path(cams.image_paths[0]).name} would "
             f"be {where[0] if where else 'masks/<its name>.png'}); every pixel is used")
        masks = ()
    return Scene(cams, source_w, source_h, transform, train, test, fmt, tuple(files), source_info, masks)


def image_source(folder: Path, cams: Cameras, as_is: np.ndarray, read: list[tuple[int, int]]) -> dict:
    """How the images the cache holds were made, for the record of a score (``metrics.json``).

    ``folders``: where the image files are, relative to the dataset; ``as_is``: how many were used as
    they are (a shipped ``images_N``, or the full size at ratio 1); ``resized``: how many were resized
    (with ``filter``); ``read`` and ``used``: the first image's size on disk and in the cache.
    """
    def rel(p: Path) -> str:
        try:
            return str(Path(p).parent.resolve().relative_to(Path(folder).resolve()))
        except ValueError:
            return str(Path(p).parent)

    n_resized = int((~as_is).sum())
    return {"folders": sorted({rel(p) for p in cams.image_paths}), "as_is": int(as_is.sum()), "resized": n_resized,
            "filter": "cv2.INTER_AREA" if n_resized else None, "read": list(read[0]) if read else None,
            "used": [int(cams.width[0]), int(cams.height[0])] if len(cams) else None}


def normalize_cameras(cams: Cameras, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~mip360cli.data.cameras.normalize_poses`, refusing poses whose normalization overflows
    (a camera at 1e200) instead of writing NaN poses into the cache."""
    with np.errstate(all="ignore"):
        try:
            c2w, transform = normalize_poses(cams.c2w)
        except np.linalg.LinAlgError:
            c2w, transform = np.full_like(cams.c2w, np.nan), np.full((4, 4), np.nan)
    if not (np.all(np.isfinite(c2w)) and np.all(np.isfinite(transform))):
        far = int(np.argmax(np.abs(cams.c2w[:, :, 3]).max(-1)))
        raise UserError(f"{source}: the camera positions cannot be normalized: image '{cams.names[far]}' is at "
                        f"{np.array2string(cams.c2w[far, :, 3], precision=3)}, too far from the others to compute "
                        "with", hint="the file is damaged or its units are wrong: re-export the poses")
    return c2w, transform


def check_unique_frames(cams: Cameras, source: Path) -> None:
    """A frame listed twice (or two frames of one image) would be trained on, and held out, twice."""
    for label, items in (("name", cams.names), ("image file", [str(Path(p).resolve()) for p in cams.image_paths])):
        seen, repeated = set(), []
        for item in items:
            if item in seen and item not in repeated:
                repeated.append(item)
            seen.add(item)
        if repeated:
            shown = ", ".join(repeated[:3]) + (f" and {len(repeated) - 3} more" if len(repeated) > 3 else "")
            raise UserError(f"{source}: {len(repeated)} {label}(s) listed more than once: {shown}",
                            hint="each image must appear once in the camera file: remove the duplicates")


def drop_missing_images(cams: Cameras, source: Path, policy: str) -> Cameras:
    """The cameras whose image file exists; warn about (``skip``) or refuse (``error``) the others."""
    exists = np.array([Path(p).is_file() for p in cams.image_paths], bool)
    if exists.all():
        return cams
    missing = [cams.names[i] for i in np.flatnonzero(~exists)]
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    where = Path(cams.image_paths[int(np.flatnonzero(~exists)[0])]).parent
    what = f"{len(missing)} of the {len(cams)} frames in {source.name} have no image file in {where}: {shown}"
    if not exists.any():
        raise UserError(f"none of the {len(cams)} frames in {source} has its image file (looked in {where})",
                        hint="check that the images sit where the camera file says (e.g. images/ beside it)")
    if policy == "error":
        raise UserError(what, hint="restore the images, or set data.missing_images=skip to train without them")
    warn(f"{what}; training without them (data.missing_images=error to stop instead)")
    return cams.select(np.flatnonzero(exists))


def check_image_size(path: Path, actual: tuple[int, int], expected: tuple[int, int], ratio: float,
                     source: Path) -> bool:
    """Check an image's (width, height) against the camera file's.

    Accepts the full size, or the size after ``ratio`` (give or take a pixel of
    rounding, as LLFF's ``images_N`` folders are). Returns True when the image
    is already at the output size. Raises UserError otherwise.
    """
    if tuple(actual) == tuple(expected):
        return ratio == 1.0
    if ratio != 1.0:
        sw, sh = (max(1, round(e * ratio)) for e in expected)
        if abs(actual[0] - sw) <= 1 and abs(actual[1] - sh) <= 1:
            return True
    raise UserError(
        f"image {path} is {actual[0]}x{actual[1]} but {source.name} says {expected[0]}x{expected[1]}",
        hint="the intrinsics must describe the images on disk: re-export the cameras or restore the "
             "original images")
