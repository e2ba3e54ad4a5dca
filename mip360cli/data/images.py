"""Image files: sizes from headers (no decode), decoding to RGB, resizing."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, read from the PNG or JPEG header when possible.

    Falls back to a full decode for other formats. Raises UserError when the
    file is missing or unreadable.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                return int(w), int(h)
            if head[:2] == b"\xff\xd8":
                size = _jpeg_size(f)
                if size is not None:
                    return size
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist",
                        hint="check the image folder next to the camera file") from None
    except OSError as e:
        raise UserError(f"cannot read image {path}: {e.strerror}") from None
    img = read_image(path)
    return img.shape[1], img.shape[0]


def _jpeg_size(f) -> tuple[int, int] | None:
    """Scan JPEG markers for a start-of-frame segment; None if not found."""
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte and byte != b"\xff":
            byte = f.read(1)
        while byte == b"\xff":
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data = f.read(5)
            if len(data) < 5:
                return None
            h, w = struct.unpack(">HH", data[1:5])
            return int(w), int(h)
        f.seek(length - 2, 1)


def read_image(path: Path) -> np.ndarray:
    """Decode an image as (H, W, 3) uint8 RGB. Raises UserError if unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).exists() else None
    if data is None:
        raise UserError(f"image {path} does not exist", hint="check the image folder next to the camera file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"cannot decode image {path}", hint="the file is damaged or not an image")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB to ``path`` (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f"cannot write image {path}")


def resize_area(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with INTER_AREA (the right filter for downscaling)."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return cv2.resize(img, (int(width), int(height)), interpolation=cv2.INTER_AREA)
