"""Cameras in the one convention used inside mip360, and rays from them.

Convention (docs/algorithm.md §1): OpenCV camera axes (x right, y down,
z forward), camera-to-world ``c2w`` (3, 4), per-image intrinsics ``K``,
pixel centers at ``(u + 0.5, v + 0.5)``. Lens distortion uses OpenCV's
coefficients ``(k1, k2, p1, p2, k3)`` on normalized image coordinates.
Format readers convert into this once; nothing else knows about formats.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import UserError


@dataclass(frozen=True)
class Cameras:
    """N pinhole cameras (with optional lens distortion) and their images.

    Attributes:
        K: (N, 3, 3) float64 intrinsics, pixels.
        c2w: (N, 3, 4) float64 camera-to-world, OpenCV axes.
        width, height: (N,) int64 image size in pixels.
        dist: (N, 5) float64 OpenCV distortion (k1, k2, p1, p2, k3); zeros = pinhole.
        image_paths: N image files.
        names: N image names (unique, in the dataset's order).
    """

    K: np.ndarray
    c2w: np.ndarray
    width: np.ndarray
    height: np.ndarray
    dist: np.ndarray
    image_paths: tuple[Path, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        shapes = {"K": (n, 3, 3), "c2w": (n, 3, 4), "width": (n,), "height": (n,), "dist": (n, 5)}
        for attr, shape in shapes.items():
            if getattr(self, attr).shape != shape:
                raise ValueError(f"Cameras.{attr} has shape {getattr(self, attr).shape}, expected {shape}")
        if len(self.image_paths) != n:
            raise ValueError("Cameras.image_paths and names differ in length")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def create(cls, K, c2w, width, height, image_paths: Sequence, names: Sequence[str],
               dist=None) -> "Cameras":
        n = len(names)
        return cls(
            K=np.asarray(K, np.float64).reshape(n, 3, 3),
            c2w=np.asarray(c2w, np.float64).reshape(n, 3, 4),
            width=np.asarray(width, np.int64).reshape(n),
            height=np.asarray(height, np.int64).reshape(n),
            dist=np.zeros((n, 5)) if dist is None else np.asarray(dist, np.float64).reshape(n, 5),
            image_paths=tuple(Path(p) for p in image_paths),
            names=tuple(names),
        )

    def select(self, indices: Sequence[int] | np.ndarray) -> "Cameras":
        idx = np.asarray(indices, np.int64)
        return Cameras(self.K[idx], self.c2w[idx], self.width[idx], self.height[idx], self.dist[idx],
                       tuple(self.image_paths[i] for i in idx), tuple(self.names[i] for i in idx))

    def replace(self, **changes) -> "Cameras":
        return dataclasses.replace(self, **changes)

    def scaled(self, ratio: float) -> "Cameras":
        """Cameras for images resized by ``ratio`` (fx, fy, cx, cy times ratio).

        Distortion acts on normalized coordinates, so it does not change.
        """
        if ratio == 1.0:
            return self
        K = self.K.copy()
        K[:, :2, :] *= ratio
        return self.replace(K=K, width=scaled_size(self.width, ratio), height=scaled_size(self.height, ratio))

    @property
    def pixels(self) -> np.ndarray:
        """(N,) pixel count of each image."""
        return self.width * self.height


def scaled_size(size: np.ndarray | int, ratio: float) -> np.ndarray:
    """Image size after resizing by ``ratio`` (rounded, at least 1 pixel)."""
    return np.maximum(1, np.round(np.asarray(size) * ratio)).astype(np.int64)


# ----------------------------------------------------------------------------- validation


def check_poses(c2w: np.ndarray, names: Sequence[str], source: str | Path) -> None:
    """Raise a UserError naming the first image whose pose is not finite or not a rotation.

    Args:
        c2w: (N, 3, 4) camera-to-world matrices.
        names: N image names, for the message.
        source: the file the poses came from, for the message.
    """
    for i, m in enumerate(c2w):
        if not np.all(np.isfinite(m)):
            raise UserError(f"{source}: the pose of image '{names[i]}' has NaN or inf values",
                            hint="re-export the camera poses, or remove that image")
        R = m[:, :3]
        err = np.abs(R.T @ R - np.eye(3)).max()
        det = np.linalg.det(R)
        if err > 1e-3 or abs(det - 1) > 1e-3:
            raise UserError(
                f"{source}: the pose of image '{names[i]}' is not a rotation "
                f"(|R^T R - I| = {err:.3g}, det R = {det:.4f})",
                hint="poses must be rigid (no scale, no mirror); check the file's conventions")


MAX_FOV_DEG = 179.0
"""Wider than any pinhole lens: a focal length that gives this is in the wrong units or damaged."""


def check_intrinsics(K: np.ndarray, width: np.ndarray, height: np.ndarray, names: Sequence[str],
                     source: str | Path) -> None:
    """Raise a UserError for non-finite or non-positive focal lengths or sizes."""
    for i in range(len(names)):
        fx, fy = K[i, 0, 0], K[i, 1, 1]
        if not (np.all(np.isfinite(K[i])) and fx > 0 and fy > 0):
            raise UserError(f"{source}: intrinsics of image '{names[i]}' are invalid (fx={fx}, fy={fy})")
        if width[i] <= 0 or height[i] <= 0:
            raise UserError(f"{source}: image '{names[i]}' has size {width[i]}x{height[i]}")
        fov = math.degrees(max(fov_from_focal(fx, width[i]), fov_from_focal(fy, height[i])))
        if fov >= MAX_FOV_DEG:
            raise UserError(f"{source}: image '{names[i]}' has a field of view of {fov:.4g} degrees (fx={fx:.4g}, "
                            f"fy={fy:.4g} for {width[i]}x{height[i]} pixels); a pinhole camera sees less than "
                            f"{MAX_FOV_DEG} degrees", hint="check the focal length's units (pixels)")


# ----------------------------------------------------------------------------- rotations

# Right-multiplying an OpenGL camera-to-world rotation (x right, y up, z backwards) by this gives
# the OpenCV one (x right, y down, z forward), and back.
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def quaternion_to_rotation(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> (3, 3) rotation."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * x * z + 2 * w * y],
        [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
        [2 * x * z - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y],
    ])


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z) with w >= 0."""
    K = np.array([
        [R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
        [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
        [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
        [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]],
    ]) / 3.0
    vals, vecs = np.linalg.eigh(K)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return -q if q[0] < 0 else q


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (wxyz), the shorter way round."""
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    angle = np.arccos(dot)
    return (np.sin((1 - t) * angle) * q0 + np.sin(t * angle) * q1) / np.sin(angle)


def focal_from_fov(fov: float, size: float) -> float:
    """Focal length in pixels of a field of view ``fov`` (radians) across ``size`` pixels.

    Example:
        >>> round(focal_from_fov(math.pi / 2, 100), 6)
        50.0
    """
    return 0.5 * size / math.tan(0.5 * fov)


def fov_from_focal(focal: float, size: float) -> float:
    """Field of view (radians) across ``size`` pixels of a focal length in pixels: the inverse of
    :func:`focal_from_fov`."""
    return 2 * math.atan(0.5 * size / focal)


def intrinsics_from_fov(fov_y: float, width: int, height: int) -> np.ndarray:
    """(3, 3) K of a vertical field of view ``fov_y`` (radians): square pixels, principal point at the
    image center (the cameras of camera-path files and of the viewer)."""
    f = focal_from_fov(fov_y, height)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world (3, 4) at ``position`` looking at ``target``, image-up along ``up``."""
    forward = np.asarray(target, float) - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward, np.asarray(position, float)], axis=1)


# ----------------------------------------------------------------------------- normalization


def normalize_poses(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Center, rotate and scale poses of an unbounded 360 capture (docs/algorithm.md §1).

    Center = mean camera position; rotation = PCA of the positions with the
    third axis "up" (its sign such that the mean camera up vector, -y in
    OpenCV axes, points +up); scale such that the largest |coordinate| of any
    camera center is 1. Eigenvector signs are fixed (largest component
    positive) so near-identical inputs give identical outputs.

    Args:
        c2w: (N, 3, 4) camera-to-world.
    Returns:
        c2w_normalized: (N, 3, 4).
        transform: (4, 4) mapping input world points to normalized ones
            (``p_n = transform @ [p, 1]``); its scale is ``transform[0, :3]`` norm.
    """
    centers = c2w[:, :, 3]
    mean = centers.mean(axis=0)
    centered = centers - mean
    if len(c2w) >= 3:
        _, eigvec = np.linalg.eigh(centered.T @ centered)
        axes = eigvec[:, ::-1].T.copy()  # rows: descending variance; last = up
    else:
        axes = np.eye(3)
    for k in range(2):
        if axes[k, np.argmax(np.abs(axes[k]))] < 0:
            axes[k] *= -1
    axes[2] = np.cross(axes[0], axes[1])  # proper rotation
    mean_up = -c2w[:, :, 1].mean(axis=0)
    if mean_up @ axes[2] < 0:
        axes[1:] *= -1  # rotate 180 degrees about the first axis
    rotated = centered @ axes.T
    extent = np.abs(rotated).max()
    scale = 1.0 / extent if extent > 0 else 1.0
    transform = np.eye(4)
    transform[:3, :3] = scale * axes
    transform[:3, 3] = -scale * axes @ mean
    return transform_poses(transform, c2w), transform


def transform_poses(transform: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Apply a similarity ``transform`` (4, 4) to poses (N, 3, 4), keeping rotations unit."""
    scale = np.linalg.norm(transform[0, :3])
    R = transform[:3, :3] / scale
    out = np.empty_like(c2w)
    out[:, :, :3] = R @ c2w[:, :, :3]
    out[:, :, 3] = c2w[:, :, 3] @ transform[:3, :3].T + transform[:3, 3]
    return out


def similarity_alignment(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity (s, R, t) minimising ``|s R src + t - dst|^2`` over points (Umeyama, 1991).

    Used to compare poses recovered up to scale and orientation (``mip360 poses``) with known ones.

    Args:
        src, dst: (N, 3) corresponding points, N >= 3 not collinear.
    Returns:
        scale s, (3, 3) rotation R (det +1), (3,) translation t.
    """
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float((S * np.diag(D)).sum() / ((a ** 2).sum() / len(src)))
    return s, R, mu_d - s * R @ mu_s


def pose_errors(est: Cameras, true: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Errors of ``est`` against ``true`` after the best similarity of the camera centers.

    Returns:
        (N,) rotation errors in degrees; (N,) position errors relative to the mean
        distance of the true cameras from their centroid.
    """
    s, R, t = similarity_alignment(est.c2w[:, :, 3], true.c2w[:, :, 3])
    aligned = s * est.c2w[:, :, 3] @ R.T + t
    radius = np.linalg.norm(true.c2w[:, :, 3] - true.c2w[:, :, 3].mean(0), axis=1).mean()
    rel = np.linalg.norm(aligned - true.c2w[:, :, 3], axis=1) / radius
    cos = [(np.trace((R @ e[:, :3]).T @ g[:, :3]) - 1) / 2 for e, g in zip(est.c2w, true.c2w)]
    return np.degrees(np.arccos(np.clip(cos, -1, 1))), rel


def split_indices(n: int, test_every: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: test = every ``test_every``-th image (index % k == 0).

    ``test_every = 0`` holds nothing out. Returns (train (N_train,), test (N_test,)).
    """
    idx = np.arange(n)
    if test_every <= 0:
        return idx, idx[:0]
    test = idx % test_every == 0
    return idx[~test], idx[test]


def undistort_pixels_cv2(pixels: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Normalized undistorted coordinates of pixel positions, by OpenCV (numpy path).

    Args:
        pixels: (R, 2) pixel positions (centers at +0.5); K: (3, 3); dist: (5,).
    Returns:
        (R, 2) normalized coordinates (x/z, y/z).
    """
    import cv2

    src = np.asarray(pixels, np.float64)[:, None]
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)
    if hasattr(cv2, "undistortPointsIter"):  # OpenCV 4
        out = cv2.undistortPointsIter(src, K, dist, None, None, crit)
    else:  # OpenCV 5 folded the iterative variant into undistortPoints
        out = cv2.undistortPoints(src, K, dist, R=None, P=None, criteria=crit)
    return out[:, 0]


# ----------------------------------------------------------------------------- rays (torch)


def distort(xy, dist):
    """Apply OpenCV distortion to normalized coordinates.

    Args:
        xy: (..., 2) undistorted normalized coordinates (x/z, y/z).
        dist: (..., 5) coefficients (k1, k2, p1, p2, k3), broadcastable.
    Returns:
        (..., 2) distorted normalized coordinates.
    """
    x, y = xy[..., 0], xy[..., 1]
    k1, k2, p1, p2, k3 = (dist[..., i] for i in range(5))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], -1) if isinstance(xy, np.ndarray) else _torch().stack([xd, yd], -1)


def undistort(xy_d, dist, iterations: int = 10):
    """Invert :func:`distort` by Newton's method (as multinerf does).

    Args:
        xy_d: (..., 2) distorted normalized coordinates, torch tensor.
        dist: (..., 5) coefficients, broadcastable.
    Returns:
        (..., 2) undistorted normalized coordinates.
    """
    torch = _torch()
    xd, yd = xy_d[..., 0], xy_d[..., 1]
    k1, k2, p1, p2, k3 = (dist[..., i] for i in range(5))
    x, y = xd.clone(), yd.clone()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        d_radial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        fx_x = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x
        fx_y = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_x = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_y = radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x
        det = fx_x * fy_y - fx_y * fy_x
        safe = det.abs() > 1e-12
        det = torch.where(safe, det, torch.ones_like(det))
        step_x = torch.where(safe, (fx * fy_y - fy * fx_y) / det, torch.zeros_like(det))
        step_y = torch.where(safe, (fy * fx_x - fx * fy_x) / det, torch.zeros_like(det))
        x, y = x - step_x, y - step_y
    return torch.stack([x, y], -1)


def pixel_rays(K, c2w, dist, image_index, u, v):
    """Rays through pixel centers, regenerated from camera parameters.

    ``d = R K^-1 [u + .5, v + .5, 1]`` (unit z in the camera frame, so ``t``
    along the ray is z-depth), with distortion undone first when present.

    Args:
        K: (N, 3, 3) intrinsics tensor.
        c2w: (N, 3, 4) camera-to-world tensor.
        dist: (N, 5) distortion tensor, or None for pinhole cameras.
        image_index: (R,) int64 camera of each ray.
        u, v: (R,) pixel column and row (integers or floats).
    Returns:
        origins: (R, 3); directions: (R, 3), not normalized; viewdirs: (R, 3) unit.

    Example:
        >>> import torch
        >>> K = torch.tensor([[[2., 0, 1], [0, 2, 1], [0, 0, 1]]])
        >>> c2w = torch.eye(3, 4)[None]
        >>> o, d, _ = pixel_rays(K, c2w, None, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
        >>> d.tolist()
        [[-0.25, -0.25, 1.0]]
    """
    torch = _torch()
    Ki = K[image_index]
    x = (u.to(K.dtype) + 0.5 - Ki[:, 0, 2]) / Ki[:, 0, 0]
    y = (v.to(K.dtype) + 0.5 - Ki[:, 1, 2]) / Ki[:, 1, 1]
    # K may have skew (K[0, 1]); remove it after dividing by fy.
    x = x - Ki[:, 0, 1] * y / Ki[:, 0, 0]
    xy = torch.stack([x, y], -1)
    if dist is not None:
        d_i = dist[image_index]
        needs = d_i.abs().amax(-1) > 0  # rays of undistorted cameras keep their exact xy (no host sync)
        xy = torch.where(needs[:, None], undistort(xy, d_i), xy)
    cam_dirs = torch.cat([xy, torch.ones_like(xy[:, :1])], -1)
    pose = c2w[image_index]
    directions = (pose[:, :, :3] @ cam_dirs[:, :, None])[..., 0]
    origins = pose[:, :, 3].expand_as(directions)
    viewdirs = directions / directions.norm(dim=-1, keepdim=True)
    return origins, directions, viewdirs


def image_rays(K: np.ndarray, c2w: np.ndarray, dist: np.ndarray | None, width: int, height: int, device):
    """Origins, directions, viewdirs (H*W, 3) of one camera's pixels, row by row, as tensors on ``device``.

    Args:
        K: (3, 3); c2w: (3, 4); dist: (5,) or None (pinhole).
    """
    torch = _torch()
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32)[None], device=device)  # noqa: E731
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    cam = torch.zeros(height * width, dtype=torch.long, device=device)
    d = t(dist) if dist is not None and np.any(np.asarray(dist) != 0) else None
    return pixel_rays(t(K), t(c2w), d, cam, u.reshape(-1), v.reshape(-1))


def cameras_to_tensors(cameras: Cameras, device=None, dtype=None) -> dict:
    """K, c2w and dist of ``cameras`` as torch tensors (dist None when all zero)."""
    torch = _torch()
    dtype = dtype or torch.float32
    t = {k: torch.as_tensor(getattr(cameras, k), dtype=dtype, device=device) for k in ("K", "c2w")}
    t["dist"] = (torch.as_tensor(cameras.dist, dtype=dtype, device=device)
                 if np.any(cameras.dist != 0) else None)
    return t


def _torch():
    import torch  # imported lazily: preprocess never needs torch

    return torch
