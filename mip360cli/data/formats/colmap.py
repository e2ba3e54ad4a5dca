"""COLMAP sparse models (``sparse/0/cameras.bin|txt`` and ``images.bin|txt``).

COLMAP's camera axes are OpenCV's and its poses are world-to-camera
(quaternion ``qvec`` = (w, x, y, z) and ``tvec``); pixel centers sit at
``u + 0.5`` as in mip360. ``points3D`` is not needed.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from ...core.errors import UserError
from ...core.files import GIB, MIB, check_regular_file
from ..cameras import Cameras, quaternion_to_rotation, rotation_to_quaternion
from ..images import downscaled_folder

# model id -> (name, number of params)
MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
MODEL_IDS = {name: i for i, (name, _) in MODELS.items()}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


def model_dir(folder: Path) -> Path | None:
    """The folder holding cameras.* and images.*, or None if this is not COLMAP data."""
    for cand in (folder / "sparse" / "0", folder / "sparse", folder):
        for ext in ("bin", "txt"):
            if (cand / f"cameras.{ext}").exists() and (cand / f"images.{ext}").exists():
                return cand
    return None


def detect(folder: Path) -> bool:
    return model_dir(folder) is not None


def input_files(folder: Path) -> list[Path]:
    d = model_dir(folder)
    return [p for p in sorted(d.iterdir()) if p.stem in ("cameras", "images")] if d else []


def read(folder: Path, ratio: float = 1.0) -> Cameras:
    """Read a COLMAP model under ``folder``; images are in ``folder/images``.

    With ``ratio = 1/N`` and a folder ``images_N`` beside ``images`` (the
    Mip-NeRF 360 dataset's layout), the images are taken from ``images_N``;
    the cameras still describe the full-size images the model was made from.
    """
    d = model_dir(folder)
    if d is None:
        raise UserError(f"{folder}: no COLMAP model (sparse/0/cameras.bin or .txt) found")
    binary = (d / "cameras.bin").exists() and (d / "images.bin").exists()
    cams_file = d / ("cameras.bin" if binary else "cameras.txt")
    imgs_file = d / ("images.bin" if binary else "images.txt")
    cams = _read_cameras_bin(cams_file) if binary else _read_cameras_txt(cams_file)
    images = _read_images_bin(imgs_file) if binary else _read_images_txt(imgs_file)
    if not images:
        raise UserError(f"{imgs_file}: the model has no registered images",
                        hint="COLMAP did not reconstruct any camera; check the reconstruction")
    images.sort(key=lambda im: im["name"])
    down = downscaled_folder(folder, ratio)
    image_dir = down[0] if down else folder / "images"
    Ks, c2ws, ws, hs, dists, paths, names = [], [], [], [], [], [], []
    for im in images:
        cam_id = im["camera_id"]
        if cam_id not in cams:
            raise UserError(f"{imgs_file}: image '{im['name']}' uses camera {cam_id}, "
                            f"which {cams_file.name} does not define")
        model, w, h, params = cams[cam_id]
        if model not in SUPPORTED:
            raise UserError(
                f"{cams_file}: camera {cam_id} uses the COLMAP model {model}, which mip360 does not support "
                f"(supported: {', '.join(SUPPORTED)})",
                hint="undistort the images first: colmap image_undistorter --output_type COLMAP")
        K, dist = _intrinsics(model, params)
        q = np.asarray(im["qvec"], np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            norm = float(np.linalg.norm(q))
        if not (np.all(np.isfinite(q)) and np.isfinite(norm) and norm > 1e-12):
            where = f"{imgs_file}:{im['line']}" if "line" in im else str(imgs_file)
            raise UserError(f"{where}: image '{im['name']}' has a rotation quaternion {tuple(q.tolist())} that "
                            "cannot be normalized", hint="the file is damaged: re-export the COLMAP model")
        R = quaternion_to_rotation(q)
        t = np.asarray(im["tvec"], np.float64)
        c2w = np.concatenate([R.T, (-R.T @ t)[:, None]], axis=1)
        Ks.append(K), c2ws.append(c2w), ws.append(w), hs.append(h), dists.append(dist)
        paths.append(image_dir / im["name"])
        names.append(im["name"])
    return Cameras.create(Ks, c2ws, ws, hs, paths, names, dists)


def _intrinsics(model: str, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist = np.zeros(5)
    if model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif model == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    elif model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy, dist[0] = p[1], p[2], p[3]
    elif model == "RADIAL":
        fx = fy = p[0]
        cx, cy, dist[0], dist[1] = p[1:5]
    else:  # OPENCV
        fx, fy, cx, cy = p[:4]
        dist[:4] = p[4:8]
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
    return K, dist


# ----------------------------------------------------------------------------- binary


CAMERAS_LIMIT = 64 * MIB  # a camera is at most 100 bytes
IMAGES_LIMIT = 64 * GIB  # images.bin holds every image's 2D points (24 bytes each): skipped, never read


class _Reader:
    """Reads a COLMAP binary file through a file object: bounded, its records checked against its size."""

    def __init__(self, path: Path, limit: int):
        self.path = path
        self.size = check_regular_file(path, "COLMAP model file", limit).st_size
        self.file = open(path, "rb")

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.file.read(size)
        if len(data) < size:
            raise UserError(f"{self.path}: file ends early (truncated at byte {self.size})",
                            hint="re-export the COLMAP model")
        return struct.unpack(fmt, data)

    def skip(self, n: int) -> None:
        if self.file.tell() + n > self.size:
            raise UserError(f"{self.path}: file ends early (truncated at byte {self.size})",
                            hint="re-export the COLMAP model")
        self.file.seek(n, 1)

    def count(self, record_bytes: int, what: str) -> int:
        """A record count, which the bytes left must be able to hold (else the file is damaged)."""
        (n,) = self.take("<Q")
        if n * record_bytes > self.size - self.file.tell():
            raise UserError(f"{self.path}: file ends before the {n:,} {what} it says it holds ({self.size:,} bytes)",
                            hint="the file is truncated or damaged: re-export the COLMAP model")
        return n

    def cstring(self) -> str:
        start = self.file.tell()
        raw = bytearray()
        while not raw.endswith(b"\0"):
            chunk = self.file.read(256)
            if not chunk:
                raise UserError(f"{self.path}: file ends inside an image name (truncated)")
            raw += chunk
            if b"\0" in chunk:
                break
        end = raw.index(b"\0")
        self.file.seek(start + end + 1)
        try:
            return raw[:end].decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{self.path}: the image name at byte {start} is not valid UTF-8 text",
                            hint="the file is damaged: re-export the COLMAP model") from None


def _read_cameras_bin(path: Path) -> dict:
    cams = {}
    with _Reader(path, CAMERAS_LIMIT) as r:
        for _ in range(r.count(24 + 3 * 8, "cameras")):
            cam_id, model_id, w, h = r.take("<iiQQ")
            if model_id not in MODELS:
                raise UserError(f"{path}: camera {cam_id} has unknown model id {model_id}")
            name, nparams = MODELS[model_id]
            params = np.array(r.take(f"<{nparams}d"))
            cams[cam_id] = (name, int(w), int(h), params)
    return cams


def _read_images_bin(path: Path) -> list[dict]:
    images = []
    with _Reader(path, IMAGES_LIMIT) as r:
        for _ in range(r.count(64 + 2 + 8, "images")):
            image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.take("<idddddddi")
            name = r.cstring()
            (npts,) = r.take("<Q")
            r.skip(npts * 24)  # (x, y, point3D_id) per keypoint: not needed
            images.append(dict(id=image_id, qvec=(qw, qx, qy, qz), tvec=(tx, ty, tz), camera_id=cam_id, name=name))
    return images


# ----------------------------------------------------------------------------- text


TEXT_LIMIT = 64 * GIB  # images.txt holds every image's 2D points: read line by line


def _data_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line that is not a comment, read one at a time."""
    check_regular_file(path, "COLMAP model file", TEXT_LIMIT)
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{i}: not valid UTF-8 text",
                                hint="the file is damaged: re-export the COLMAP model") from None
            if not line.startswith("#"):
                yield i, line


def _int(path: Path, lineno: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{path}:{lineno}: {what} must be a whole number, got {text!r}") from None


def _floats(path: Path, lineno: int, fields: list[str]) -> list[float]:
    try:
        return [float(x) for x in fields]
    except ValueError:
        raise UserError(f"{path}:{lineno}: expected numbers, got {' '.join(fields)!r}") from None


def _read_cameras_txt(path: Path) -> dict:
    cams = {}
    for lineno, line in _data_lines(path):
        f = line.split()
        if not f:
            continue
        if len(f) < 4:
            raise UserError(f"{path}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'")
        model = f[1]
        if model not in MODEL_IDS:
            raise UserError(f"{path}:{lineno}: unknown COLMAP camera model {model}")
        nparams = MODELS[MODEL_IDS[model]][1]
        if len(f) != 4 + nparams:
            raise UserError(f"{path}:{lineno}: model {model} needs {nparams} parameters, got {len(f) - 4}")
        w, h = _floats(path, lineno, f[2:4])
        cams[_int(path, lineno, f[0], "CAMERA_ID")] = (model, int(w), int(h), np.array(_floats(path, lineno, f[4:])))
    return cams


def _is_points_line(fields: list[str]) -> bool:
    """A POINTS2D line: (X, Y, POINT3D_ID) triples of numbers, each POINT3D_ID a whole number (-1 for none).
    An image line ends in a name; one without its name has a QX and a TX that are not whole numbers."""
    if len(fields) % 3:
        return False
    try:
        [float(x) for x in fields]
        [int(x) for x in fields[2::3]]
    except ValueError:
        return False
    return True


def _read_images_txt(path: Path) -> list[dict]:
    """Image lines of ``images.txt``, each followed by its 2D-point line or not.

    COLMAP writes a POINTS2D line (possibly empty) after every image line, but
    some tools leave those lines out; a line right after an image line is its
    POINTS2D line when its content says so, so both forms read the same. Any
    other line is an image line, and one without all ten fields (a lost NAME)
    is an error, never a frame dropped without a word.
    """
    images, after_image = [], False
    for lineno, line in _data_lines(path):
        f = line.split(maxsplit=9)
        if after_image and (not f or _is_points_line(line.split())):
            after_image = False
            continue
        if not f:
            continue
        if len(f) < 10:
            raise UserError(f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got "
                            f"{len(f)} field(s)", hint="every image line needs its image's file NAME")
        vals = _floats(path, lineno, f[1:8])
        images.append(dict(id=_int(path, lineno, f[0], "IMAGE_ID"), qvec=vals[:4], tvec=vals[4:7],
                           camera_id=_int(path, lineno, f[8], "CAMERA_ID"), name=f[9], line=lineno))
        after_image = True
    return images


# ----------------------------------------------------------------------------- writing


def _model_for(K: np.ndarray, dist: np.ndarray) -> tuple[str, list[float]]:
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if np.any(dist != 0):
        return "OPENCV", [fx, fy, cx, cy, *dist[:4]]
    if fx == fy:
        return "SIMPLE_PINHOLE", [fx, cx, cy]
    return "PINHOLE", [fx, fy, cx, cy]


def write(folder: Path, cameras: Cameras, binary: bool = True) -> None:
    """Write ``cameras`` as a COLMAP model in ``folder/sparse/0`` (one camera per image).

    Image names are taken relative to ``folder/images``.
    """
    d = folder / "sparse" / "0"
    d.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(len(cameras)):
        model, params = _model_for(cameras.K[i], cameras.dist[i])
        c2w = cameras.c2w[i]
        R = c2w[:, :3].T
        t = -R @ c2w[:, 3]
        entries.append((i + 1, model, int(cameras.width[i]), int(cameras.height[i]), params,
                        rotation_to_quaternion(R), t, cameras.names[i]))
    if binary:
        with open(d / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(entries)))
            for cid, model, w, h, params, *_ in entries:
                f.write(struct.pack("<iiQQ", cid, MODEL_IDS[model], w, h))
                f.write(struct.pack(f"<{len(params)}d", *params))
        with open(d / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(entries)))
            for cid, _, _, _, _, q, t, name in entries:
                f.write(struct.pack("<idddddddi", cid, *q, *t, cid))
                f.write(name.encode() + b"\0")
                f.write(struct.pack("<Q", 0))
        with open(d / "points3D.bin", "wb") as f:
            f.write(struct.pack("<Q", 0))
    else:
        with open(d / "cameras.txt", "w") as f:
            f.write("# Camera list with one line of data per camera:\n"
                    "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
            for cid, model, w, h, params, *_ in entries:
                f.write(f"{cid} {model} {w} {h} " + " ".join(repr(float(p)) for p in params) + "\n")
        with open(d / "images.txt", "w") as f:
            f.write("# Image list with two lines of data per image:\n"
                    "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                    "#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
            for cid, _, _, _, _, q, t, name in entries:
                f.write(" ".join([str(cid), *(repr(float(x)) for x in (*q, *t)), str(cid), name]) + "\n\n")
        (d / "points3D.txt").write_text("# 3D point list (empty)\n")
