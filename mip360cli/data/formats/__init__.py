"""Format readers: each turns one capture tool's files into :class:`Cameras`.

Every module offers ``detect(folder)``, ``input_files(folder)`` and ``read``;
conversions to the OpenCV convention happen in these modules only.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2

from ...core.errors import UserError
from ..cameras import Cameras
from . import colmap, easymocap, llff, transforms

READERS = {"colmap": colmap, "llff": llff, "transforms": transforms, "easymocap": easymocap}


def detect_format(folder: Path) -> str:
    """Name of the format found in ``folder``. Raises UserError if none or ambiguous."""
    if not folder.exists():
        raise UserError(f"dataset folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder", hint="give the dataset folder (or a .h5 cache where accepted)")
    found = [name for name, mod in READERS.items() if mod.detect(folder)]
    if not found:
        if not any(not p.name.startswith(".") for p in folder.iterdir()):
            raise UserError(f"dataset folder {folder} is empty",
                            hint="try `mip360 example DIR` for a small scene to start from")
        raise UserError(
            f"no camera file found in {folder}",
            hint="expected one of: sparse/0/cameras.bin|txt (COLMAP), poses_bounds.npy (LLFF), "
                 "transforms.json (nerfstudio/instant-ngp), intri.yml + extri.yml (EasyMocap)")
    if len(found) > 1:
        raise UserError(
            f"{folder} holds cameras in {len(found)} formats: "
            + ", ".join(f"{name} ({_describe(READERS[name], folder)})" for name in found),
            hint=f"choose one with --format (e.g. --format {found[0]}) or data.format={found[0]}")
    return found[0]


def _describe(mod, folder: Path) -> str:
    files = mod.input_files(folder)
    return ", ".join(str(p.relative_to(folder)) for p in files) if files else mod.__name__


def read_cameras(folder: Path, fmt: str = "auto", ratio: float = 1.0, easymocap_frame: int = 0
                 ) -> tuple[str, Cameras, list[Path]]:
    """Read the cameras of ``folder`` in format ``fmt`` (or detected).

    Returns (format name, cameras in the input's world, the camera files read).
    """
    if fmt == "auto":
        fmt = detect_format(folder)
    elif fmt not in READERS:
        raise UserError(f"unknown format '{fmt}'", hint=f"choose one of: auto, {', '.join(READERS)}")
    elif not folder.is_dir():
        raise UserError(f"dataset folder {folder} does not exist")
    elif not READERS[fmt].detect(folder):
        raise UserError(f"{folder} does not hold {fmt} data", hint="drop --format to detect the format")
    mod = READERS[fmt]
    files = mod.input_files(folder)
    try:
        if fmt in ("llff", "colmap"):
            cams = mod.read(folder, ratio=ratio)
        elif fmt == "easymocap":
            cams = mod.read(folder, frame=easymocap_frame)
        else:
            cams = mod.read(folder)
    except UserError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, struct.error,
            cv2.error) as e:
        # The readers name the file, line and field for the damage they know; anything else a damaged
        # file can cause still reaches the user as one message naming the file.
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"{', '.join(str(f) for f in files) or folder}: cannot read the {fmt} cameras "
                        f"({type(e).__name__}: {detail})",
                        hint="the file is damaged or not in the format it claims: re-export it from the tool "
                             "that made it") from e
    return fmt, cams, files
