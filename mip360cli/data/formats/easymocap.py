"""EasyMocap calibration: ``intri.yml`` + ``extri.yml`` (OpenCV FileStorage).

``intri.yml``: ``names`` and per camera ``K_<name>`` (3x3), ``dist_<name>``
(1x5, OpenCV order). ``extri.yml``: ``Rot_<name>`` (3x3, or ``R_<name>`` as a
3x1 Rodrigues vector) and ``T_<name>`` (3x1), world-to-camera, OpenCV axes.
Images: ``images/<name>/`` holds the frames of each camera; a static scene
uses one frame per camera (``data.easymocap_frame``, default the first).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ...core.errors import UserError
from ...core.files import MIB, check_regular_file
from ..cameras import Cameras
from ..images import image_size, list_images

INTRI, EXTRI = "intri.yml", "extri.yml"


def detect(folder: Path) -> bool:
    return (folder / INTRI).exists() and (folder / EXTRI).exists()


def input_files(folder: Path) -> list[Path]:
    return [folder / INTRI, folder / EXTRI]


def _open(path: Path) -> cv2.FileStorage:
    if not path.exists():
        raise UserError(f"{path} does not exist", hint="EasyMocap data needs intri.yml and extri.yml")
    check_regular_file(path, "camera file", 256 * MIB)
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError) as e:  # SystemError: OpenCV's parser fails on some binary garbage
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "parse error"
        raise UserError(f"{path}: malformed OpenCV YAML: {msg}",
                        hint="the file must start with '%YAML:1.0' and hold OpenCV matrices") from None
    if not fs.isOpened():
        raise UserError(f"{path}: cannot open as OpenCV YAML")
    return fs


def _mat(fs: cv2.FileStorage, key: str, path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    node = fs.getNode(key)
    if node.empty():
        return None
    m = node.mat()
    if m is None:
        raise UserError(f"{path}: '{key}' is not an OpenCV matrix")
    m = np.asarray(m, np.float64)
    if shape is not None and m.size != int(np.prod(shape)):
        raise UserError(f"{path}: '{key}' has {m.size} values, expected {int(np.prod(shape))}")
    return m.reshape(shape) if shape else m


def _names(fs: cv2.FileStorage, path: Path) -> list[str]:
    node = fs.getNode("names")
    if node.empty() or not node.isSeq():
        raise UserError(f"{path}: no 'names' list of cameras")
    return [node.at(i).string() for i in range(node.size())]


def read(folder: Path, frame: int = 0) -> Cameras:
    intri_path, extri_path = folder / INTRI, folder / EXTRI
    fi, fe = _open(intri_path), _open(extri_path)
    names = sorted(_names(fi, intri_path))
    if not names:
        raise UserError(f"{intri_path}: the 'names' list is empty")
    Ks, c2ws, ws, hs, dists, paths = [], [], [], [], [], []
    for name in names:
        K = _mat(fi, f"K_{name}", intri_path, (3, 3))
        if K is None:
            raise UserError(f"{intri_path}: camera '{name}' has no K_{name}")
        dist = _mat(fi, f"dist_{name}", intri_path)
        dist5 = np.zeros(5)
        if dist is not None:
            dist5[:min(5, dist.size)] = dist.reshape(-1)[:5]
        R = _mat(fe, f"Rot_{name}", extri_path, (3, 3))
        if R is None:
            rvec = _mat(fe, f"R_{name}", extri_path, (3,))
            if rvec is None:
                raise UserError(f"{extri_path}: camera '{name}' has neither Rot_{name} nor R_{name}")
            R = cv2.Rodrigues(rvec)[0]
        T = _mat(fe, f"T_{name}", extri_path, (3,))
        if T is None:
            raise UserError(f"{extri_path}: camera '{name}' has no T_{name}")
        cam_dir = folder / "images" / name
        frames = list_images(cam_dir) if cam_dir.is_dir() else []
        if not frames:
            raise UserError(f"{cam_dir}: no images for camera '{name}'",
                            hint="EasyMocap data keeps each camera's frames in images/<camera>/")
        if frame >= len(frames):
            raise UserError(f"{cam_dir}: data.easymocap_frame={frame} but the folder has {len(frames)} frames")
        img = frames[frame]
        H = _mat(fi, f"H_{name}", intri_path)
        W = _mat(fi, f"W_{name}", intri_path)
        w, h = (int(W.item()), int(H.item())) if H is not None and W is not None else image_size(img)
        c2w = np.concatenate([R.T, (-R.T @ T)[:, None]], axis=1)
        Ks.append(K), c2ws.append(c2w), ws.append(w), hs.append(h), dists.append(dist5), paths.append(img)
    return Cameras.create(Ks, c2ws, ws, hs, paths, names, dists)


def write(folder: Path, cameras: Cameras) -> None:
    """Write ``intri.yml`` and ``extri.yml``; camera names are ``cameras.names``."""
    fi = cv2.FileStorage(str(folder / INTRI), cv2.FILE_STORAGE_WRITE)
    fe = cv2.FileStorage(str(folder / EXTRI), cv2.FILE_STORAGE_WRITE)
    names = list(cameras.names)
    fi.write("names", names)
    fe.write("names", names)
    for i, name in enumerate(names):
        fi.write(f"K_{name}", cameras.K[i])
        fi.write(f"dist_{name}", cameras.dist[i][None])
        R = cameras.c2w[i, :, :3].T
        T = -R @ cameras.c2w[i, :, 3]
        fe.write(f"R_{name}", cv2.Rodrigues(R)[0])
        fe.write(f"Rot_{name}", R)
        fe.write(f"T_{name}", T[:, None])
    fi.release()
    fe.release()
