"""Image files: sizes from headers (no decode), decoding to 8-bit RGB as the camera saw it, resizing."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..core.errors import UserError
from ..core.files import GIB, atomic_path, check_regular_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_LIMIT = 2 * GIB
"""The largest image file read (a 16-bit 16K x 16K TIFF is 1.5 GiB)."""


def check_image_file(path: Path) -> None:
    """A regular file of at most :data:`IMAGE_LIMIT` bytes, or one UserError (a missing image, a folder,
    a device such as /dev/zero, a FIFO)."""
    if not Path(path).exists():
        raise UserError(f"image {path} does not exist", hint="check the image folder next to the camera file")
    check_regular_file(path, "image", IMAGE_LIMIT)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def downscaled_folder(folder: Path, ratio: float) -> tuple[Path, int] | None:
    """``folder/images_N`` when ``ratio == 1/N`` and that folder exists: (path, N); else None.

    LLFF and the Mip-NeRF 360 dataset ship such copies of ``images/``, downscaled by N
    (the paper evaluates at N = 4 outdoors and N = 2 indoors).
    """
    if ratio >= 1:
        return None
    n = round(1 / ratio)
    if abs(n * ratio - 1) < 1e-6 and (folder / f"images_{n}").is_dir():
        return folder / f"images_{n}", n
    return None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as mip360 decodes it (EXIF orientation applied).

    Read from the PNG or JPEG header when possible; other formats are decoded.
    Raises UserError when the file is missing or unreadable.
    """
    check_image_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                return int(w), int(h)
            if head[:2] == b"\xff\xd8":
                size, orientation = _jpeg_info(f)
                if size is not None:
                    return size[::-1] if orientation in _SWAPS_AXES else size
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist",
                        hint="check the image folder next to the camera file") from None
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e.strerror}") from None
    img = read_image(path)
    return img.shape[1], img.shape[0]


# EXIF orientations 5-8 turn the stored image by 90 degrees: width and height swap.
_SWAPS_AXES = (5, 6, 7, 8)


def _jpeg_info(f) -> tuple[tuple[int, int] | None, int]:
    """Scan JPEG markers: ((width, height) as stored, or None; EXIF orientation, 1 when absent)."""
    f.seek(2)
    orientation = 1
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":
            byte = f.read(1)
        while byte == b"\xff":
            byte = f.read(1)
        if not byte:
            return None, orientation
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None, orientation
        (length,) = struct.unpack(">H", length_bytes)
        if marker == 0xE1:  # APP1: EXIF
            segment = f.read(max(0, length - 2))
            orientation = exif_orientation(segment)
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data = f.read(5)
            if len(data) < 5:
                return None, orientation
            h, w = struct.unpack(">HH", data[1:5])
            return (int(w), int(h)), orientation
        f.seek(length - 2, 1)


def file_orientation(path: Path) -> int:
    """The EXIF orientation (1-8) of a JPEG file; 1 for other formats or when absent."""
    with open(path, "rb") as f:
        return _jpeg_info(f)[1] if f.read(2) == b"\xff\xd8" else 1


def exif_orientation(app1: bytes) -> int:
    """The orientation tag (1-8) of a JPEG APP1 segment's payload; 1 if absent or malformed."""
    if app1[:6] != b"Exif\0\0" or len(app1) < 14:
        return 1
    tiff = app1[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for k in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", tiff, ifd + 2 + 12 * k)
            if tag == 0x0112 and kind == 3:  # SHORT, stored in the first two bytes of the value
                (o,) = struct.unpack_from(order + "H", value)
                return o if 1 <= o <= 8 else 1
    except struct.error:
        pass
    return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image as stored into the upright image its EXIF orientation (1-8) describes."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.swapaxes(0, 1)
    if orientation == 6:
        return img.swapaxes(0, 1)[:, ::-1]  # 90 degrees clockwise
    if orientation == 7:
        return img.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return img.swapaxes(0, 1)[::-1]  # 90 degrees counterclockwise
    return img


def read_image(path: Path, background: Sequence[float] | None = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Decode an image as (H, W, 3) uint8 RGB, as the camera saw it. Raises UserError if unreadable.

    See :func:`decode_image` for orientation, bit depth and transparency.
    """
    path = Path(path)
    check_image_file(path)
    return decode_image(np.fromfile(str(path), dtype=np.uint8), path, background)


def decode_image(data: np.ndarray, path: Path, background: Sequence[float] | None = (1.0, 1.0, 1.0)
                 ) -> np.ndarray:
    """Decode the bytes of an image file as (H, W, 3) uint8 RGB.

    - JPEG EXIF orientation is applied (phones store portrait photos turned).
    - 16-bit images are rounded to 8 bits; float images (TIFF, EXR) are taken
      as linear-range values in [0, 1], clipped and rounded.
    - An alpha channel is composited over ``background`` (RGB in [0, 1]); with
      ``background=None`` an image with any transparent pixel is refused.

    Args:
        data: (n,) uint8 the file's bytes. path: the file, for messages.
    """
    if data.size == 0:
        raise UserError(f"image {path} is empty (0 bytes)", hint="the file is damaged: restore or remove it")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"cannot decode image {path}", hint="the file is damaged or not an image")
    if data[:2].tobytes() == b"\xff\xd8":
        img = apply_orientation(img, _jpeg_info(io.BytesIO(data.tobytes()[:1 << 20]))[1])
    if img.ndim == 2:
        img = img[:, :, None]
    alpha = None
    if img.shape[2] in (2, 4):
        img, alpha = img[:, :, :-1], img[:, :, -1:]
        if alpha.min() == (1.0 if alpha.dtype.kind == "f" else np.iinfo(alpha.dtype).max):
            alpha = None  # fully opaque: nothing to composite
    if img.dtype == np.uint8 and alpha is None:  # the common case, kept free of float copies
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.shape[2] == 1 else cv2.COLOR_BGR2RGB)
    img = _to_unit_range(img, path)  # float32 in [0, 1]
    img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img[:, :, ::-1]  # BGR -> RGB
    if alpha is not None:
        if background is None:
            raise UserError(f"image {path} has transparent pixels (an alpha channel)",
                            hint="set data.alpha=composite to put them over data.alpha_background "
                                 "(default white), or remove the alpha channel")
        a = _to_unit_range(alpha, path)
        img = img * a + np.asarray(background, np.float32) * (1 - a)
    return np.ascontiguousarray(np.round(img * 255).astype(np.uint8))


def _to_unit_range(img: np.ndarray, path: Path) -> np.ndarray:
    """Pixel values of any depth as float32 in [0, 1]."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535
    if img.dtype.kind == "f":
        img = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(img, 0, 1)
    raise UserError(f"image {path} has pixels of type {img.dtype}, which mip360 cannot read",
                    hint="convert it to 8-bit, 16-bit or float PNG, JPEG or TIFF")


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB to ``path`` (format from the extension), atomically: encoded in memory
    first, so a full disk is one clear message and leaves no half-written image."""
    ok, data = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"cannot encode image {path}", hint="use a .png or .jpg file name")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def resize_area(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with INTER_AREA (the right filter for downscaling)."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return cv2.resize(img, (int(width), int(height)), interpolation=cv2.INTER_AREA)
