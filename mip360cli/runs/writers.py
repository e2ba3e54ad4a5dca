"""Frame and video writers: PNG, depth .npy and colormap PNG, H.264 mp4. All written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..core.errors import UserError
from ..core.files import atomic_path
from ..data.images import write_image


def write_png(path: Path, rgb: np.ndarray) -> None:
    """(H, W, 3) uint8 RGB -> PNG, atomically."""
    write_image(path.with_suffix(".png"), rgb)


def write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def depth_range(depths: Iterable[np.ndarray], lo_pct: float = 1.0, hi_pct: float = 99.0) -> tuple[float, float]:
    """One (near, far) for a whole path: the min of the frames' low and the max of their high percentiles."""
    lo, hi = float("inf"), 0.0
    for d in depths:
        d = d[np.isfinite(d)]
        if d.size:
            lo, hi = min(lo, float(np.percentile(d, lo_pct))), max(hi, float(np.percentile(d, hi_pct)))
    if not np.isfinite(lo) or hi <= lo:
        lo, hi = (lo if np.isfinite(lo) else 1.0), (lo if np.isfinite(lo) else 1.0) * 2
    return lo, hi


def depth_to_color(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Turbo colormap of 1/depth over the fixed range [1/hi, 1/lo] (near = red): (H, W, 3) uint8.

    Non-finite depths (no surface: low opacity with a non-opaque background) are black.
    """
    mask = np.isfinite(depth)
    inv = 1 / np.clip(np.where(mask, depth, hi), lo, hi)
    x = (inv - 1 / hi) / max(1 / lo - 1 / hi, 1e-12)
    bgr = cv2.applyColorMap(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rgb[~mask] = 0
    return rgb


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """H.264 (yuv420p) mp4 from (H, W, 3) uint8 frames (padded to even sizes); returns the frame count."""
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_path(path, suffix=".partial.mp4") as tmp:
        writer = None
        try:
            for frame in frames:
                h, w = frame.shape[:2]
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                if writer is None:
                    writer = imageio_ffmpeg.write_frames(str(tmp), (frame.shape[1], frame.shape[0]), fps=fps,
                                                         codec="libx264", pix_fmt_out="yuv420p",
                                                         macro_block_size=1, quality=8)
                    writer.send(None)
                writer.send(np.ascontiguousarray(frame))
                count += 1
        finally:
            if writer is not None:
                writer.close()
        # ffmpeg can fail without an exception reaching us (a bad option, a full disk): check what it wrote
        written = imageio_ffmpeg.count_frames_and_secs(str(tmp))[0] if count and tmp.stat().st_size else 0
        if written != count:
            raise UserError(f"ffmpeg wrote {written} of the {count} frames of {path}",
                            hint="check the free disk space and the video options (--fps)")
    return count


def count_video_frames(path: Path) -> int:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    n = sum(1 for _ in reader)
    del meta
    return n
