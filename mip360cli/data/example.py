"""A small procedural unbounded 360-degree scene, ray traced in numpy.

Three textured spheres on a tiled floor near the center, inside a distant
textured enclosure (a sphere of radius 12 whose inside shows colored
panels and a sky gradient). Cameras sit on a ring looking inward. Colors
are 2x2 supersampled; depth is the z-depth of the pixel-center ray, in the
scene's (input) units. Everything is deterministic.

The scene's world has +z up; the cameras use OpenCV axes like all of mip360,
and each format writer converts to its own convention.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import atomic_write_text, files_below, is_disk_full, refuse_foreign
from .cameras import Cameras, look_at, undistort_pixels_cv2
from .formats import READERS, colmap, easymocap, llff, transforms
from .images import write_image
from .masks import mask_candidates, write_mask

FORMATS = tuple(READERS)
ENCLOSURE_RADIUS = 12.0
FLOOR_RADIUS = 10.0
LIGHT = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    tiles: int  # checker cells around the equator


SPHERES = (
    Sphere((0.0, 0.0, 0.5), 0.5, (0.85, 0.15, 0.1), (0.95, 0.95, 0.9), 8),
    Sphere((0.95, -0.55, 0.3), 0.3, (0.1, 0.6, 0.2), (0.95, 0.85, 0.2), 6),
    Sphere((-0.75, 0.6, 0.35), 0.35, (0.15, 0.3, 0.85), (0.95, 0.55, 0.1), 10),
)


def ring_cameras(n: int, width: int, height: int, radius: float = 3.0, elevation: float = 0.8,
                 target=(0.0, 0.0, 0.35), focal_ratio: float = 0.8, distortion: float = 0.0) -> Cameras:
    """``n`` cameras evenly spaced on a horizontal ring, looking at ``target``.

    The ring's radius varies slightly (+-4%) so its PCA axes are well defined.
    """
    K = np.array([[focal_ratio * width, 0, width / 2], [0, focal_ratio * width, height / 2], [0, 0, 1]])
    c2ws = []
    up = np.array([0.0, 0.0, 1.0])
    for i in range(n):
        a = 2 * np.pi * i / n
        r = radius * (1 + 0.04 * np.cos(2 * a))
        pos = np.array([r * np.cos(a), r * np.sin(a), elevation + 0.1 * np.sin(3 * a)])
        c2ws.append(look_at(pos, np.asarray(target), up))
    dist = np.tile([distortion, distortion / 4, 0.0, 0.0, 0.0], (n, 1))
    names = [f"{i:03d}.png" for i in range(n)]
    return Cameras.create(np.tile(K, (n, 1, 1)), c2ws, [width] * n, [height] * n, names, names, dist)


def _hit_sphere(o, d, center, radius, inside: bool = False):
    oc = o - np.asarray(center)
    a = np.einsum("ij,ij->i", d, d)
    b = np.einsum("ij,ij->i", d, oc)
    c = np.einsum("ij,ij->i", oc, oc) - radius * radius
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0))
    t = (-b + root) / a if inside else (-b - root) / a
    return np.where((disc > 0) & (t > 1e-6), t, np.inf)


def _checker(u, v, ca, cb):
    mask = ((np.floor(u) + np.floor(v)) % 2 == 0)[:, None]
    return np.where(mask, np.asarray(ca), np.asarray(cb))


def value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth deterministic noise in [0, 1] on the plane: a hashed lattice, bilinearly interpolated.

    Args:
        x, y: (R,) coordinates; the lattice spacing is 1.
    Returns:
        (R,) noise values, continuous in (x, y) and not periodic.
    """
    ix, iy = np.floor(x), np.floor(y)
    fx, fy = x - ix, y - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep: no visible lattice

    def corner(dx, dy):
        h = (ix + dx).astype(np.int64) * 73856093 ^ (iy + dy).astype(np.int64) * 19349663 ^ seed * 83492791
        h = (h ^ (h >> 13)) * 1274126177
        return ((h ^ (h >> 16)) & 0xFFFF) / 65535.0

    top = corner(0, 0) * (1 - fx) + corner(1, 0) * fx
    bottom = corner(0, 1) * (1 - fx) + corner(1, 1) * fx
    return top * (1 - fy) + bottom * fy


def _detail(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """(R, 1) multiplicative surface detail in [0.3, 1]: noise at three scales, like a worn real surface."""
    n = sum(w * value_noise(x * f, y * f, seed + k) for k, (f, w) in enumerate(((4, 0.4), (13, 0.3), (41, 0.3))))
    return (0.3 + 0.7 * n)[:, None]


def trace(o: np.ndarray, d: np.ndarray, texture: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Color and ray distance for rays ``o + t d``.

    Args:
        o, d: (R, 3) origins and (not normalized) directions in the scene world.
        texture: add non-repeating surface detail (for feature matching, e.g. ``mip360 poses``).
    Returns:
        rgb (R, 3) in [0, 1], t (R,) with the hit point at ``o + t d``.
    """
    n = len(o)
    t_best = _hit_sphere(o, d, (0, 0, 0), ENCLOSURE_RADIUS, inside=True)
    kind = np.full(n, -1)  # -1 enclosure, -2 floor, i >= 0 sphere i
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(d[:, 2] < 0, -o[:, 2] / d[:, 2], np.inf)
    p_floor = o + np.where(np.isfinite(t_floor), t_floor, 0)[:, None] * d
    t_floor = np.where(np.hypot(p_floor[:, 0], p_floor[:, 1]) < FLOOR_RADIUS, t_floor, np.inf)
    closer = t_floor < t_best
    t_best, kind = np.where(closer, t_floor, t_best), np.where(closer, -2, kind)
    for i, s in enumerate(SPHERES):
        t = _hit_sphere(o, d, s.center, s.radius)
        closer = t < t_best
        t_best, kind = np.where(closer, t, t_best), np.where(closer, i, kind)

    p = o + t_best[:, None] * d
    rgb = np.zeros((n, 3))
    normal = np.zeros((n, 3))
    # Enclosure: colored vertical panels with a horizon-to-zenith gradient (unlit).
    m = kind == -1
    q = p[m] / ENCLOSURE_RADIUS
    az = np.arctan2(q[:, 1], q[:, 0])
    el = np.arcsin(np.clip(q[:, 2], -1, 1))
    panel = np.floor((az + np.pi) / (2 * np.pi) * 6).astype(int) % 6
    palette = np.array([[0.9, 0.25, 0.2], [0.95, 0.8, 0.2], [0.25, 0.75, 0.3],
                        [0.2, 0.7, 0.85], [0.3, 0.3, 0.9], [0.85, 0.3, 0.75]])
    stripes = 0.8 + 0.2 * (np.floor(el * 8) % 2)
    rgb[m] = palette[panel] * stripes[:, None] * (0.75 + 0.25 * np.clip(el, 0, 1))[:, None]
    if texture:
        rgb[m] *= _detail(az * 4, el * 4, 1)
    # Floor: tiles of 0.75 units.
    m = kind == -2
    rgb[m] = _checker(p[m, 0] / 0.75, p[m, 1] / 0.75, (0.9, 0.85, 0.75), (0.2, 0.2, 0.25))
    if texture:
        rgb[m] *= _detail(p[m, 0], p[m, 1], 2)
    normal[m] = (0, 0, 1)
    for i, s in enumerate(SPHERES):
        m = kind == i
        nrm = (p[m] - np.asarray(s.center)) / s.radius
        lon = np.arctan2(nrm[:, 1], nrm[:, 0]) / (2 * np.pi) * s.tiles
        lat = np.arcsin(np.clip(nrm[:, 2], -1, 1)) / np.pi * s.tiles / 2
        rgb[m] = _checker(lon, lat, s.color_a, s.color_b)
        if texture:
            rgb[m] *= _detail(lon, lat, 3 + i)
        normal[m] = nrm
    lit = kind != -1
    shade = 0.45 + 0.55 * np.clip(normal[lit] @ LIGHT, 0, 1)
    rgb[lit] *= shade[:, None]
    return np.clip(rgb, 0, 1), t_best


def surface_distance(points: np.ndarray) -> np.ndarray:
    """Distance of (N, 3) scene-world points to the nearest surface of the scene: (N,).

    Example:
        >>> surface_distance(np.array([[0.0, 0, 1.5], [5, 5, 0.25], [0, 0, 11]])).round(3).tolist()
        [0.5, 0.25, 1.0]
    """
    p = np.asarray(points, float)
    r_floor = np.hypot(p[:, 0], p[:, 1])
    floor = np.where(r_floor <= FLOOR_RADIUS, np.abs(p[:, 2]), np.hypot(r_floor - FLOOR_RADIUS, p[:, 2]))
    enclosure = np.abs(ENCLOSURE_RADIUS - np.linalg.norm(p, axis=1))
    spheres = [np.abs(np.linalg.norm(p - np.asarray(s.center), axis=1) - s.radius) for s in SPHERES]
    return np.min([floor, enclosure, *spheres], axis=0)


def _camera_rays(cameras: Cameras, i: int, offsets: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    w, h = int(cameras.width[i]), int(cameras.height[i])
    K, c2w, dist = cameras.K[i], cameras.c2w[i], cameras.dist[i]
    u, v = np.meshgrid(np.arange(w) + offsets[0], np.arange(h) + offsets[1])
    pix = np.stack([u.ravel(), v.ravel()], -1)
    if np.any(dist != 0):
        xy = undistort_pixels_cv2(pix, K, dist)
    else:
        xy = (pix - K[:2, 2]) / np.diag(K)[:2]
    dirs = np.concatenate([xy, np.ones((len(xy), 1))], -1) @ c2w[:, :3].T
    return np.broadcast_to(c2w[:, 3], dirs.shape), dirs


def render_view(cameras: Cameras, i: int, texture: bool = False, gain: float = 1.0,
                intruder: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render camera ``i``: (H, W, 3) uint8 RGB, (H, W) float32 z-depth of the scene, and (H, W) bool: pixels
    the ``intruder`` covers (any part of).

    Args:
        gain: exposure: colours times ``gain`` (clipped), as a camera's auto exposure does.
        intruder: (center, radius) of a sphere (a passer-by) in this view only; the depth is the scene's.
    """
    w, h = int(cameras.width[i]), int(cameras.height[i])
    rgb = np.zeros((h * w, 3))
    covered = np.zeros(h * w, bool)
    for ox in (0.25, 0.75):
        for oy in (0.25, 0.75):
            o, d = _camera_rays(cameras, i, (ox, oy))
            color, t = trace(o, d, texture)
            if intruder is not None:
                hit = _hit_sphere(o, d, intruder[0], intruder[1]) < t
                color = np.where(hit[:, None], INTRUDER_COLOR, color)
                covered |= hit
            rgb += color / 4
    o, d = _camera_rays(cameras, i, (0.5, 0.5))
    _, t = trace(o, d)  # d has unit camera z, so t is z-depth
    img = np.round(np.clip(rgb * gain, 0, 1) * 255).astype(np.uint8).reshape(h, w, 3)
    return img, t.astype(np.float32).reshape(h, w), covered.reshape(h, w)


INTRUDER_COLOR = np.array([0.9, 0.1, 0.9])


def exposure_gains(n: int, stops: float) -> np.ndarray:
    """Each photo's exposure gain in a capture of two passes (:func:`two_pass_cameras`) under changing light:
    the first pass ``stops / 2`` brighter, the second as much darker, each drifting by a tenth of ``stops``.

    Example:
        >>> exposure_gains(4, 1.0).round(3).tolist()
        [1.414, 1.414, 0.707, 0.707]
    """
    first = n - n // 2
    passes = np.where(np.arange(n) < first, 0.5, -0.5)
    drift = 0.1 * np.sin(2 * np.pi * (np.arange(n) % first) / first)
    return 2.0 ** (stops * (passes + drift))


def two_pass_cameras(n: int, width: int, height: int, distortion: float = 0.0) -> Cameras:
    """A capture walked twice around the scene: ``n - n // 2`` photos on the ring of :func:`ring_cameras`,
    then ``n // 2`` on a ring 40% closer to the scene (half a step turned), looking the same way.

    A photo of the second pass sees the scene from directions the first pass saw too, so a change of
    light between the passes cannot pass for view-dependent colour; with 24 or more photos a pass, each
    photo's nearest camera is one of its own pass.
    """
    first = n - n // 2
    outer = ring_cameras(first, width, height, distortion=distortion)
    inner = ring_cameras(n // 2, width, height, radius=1.8, elevation=0.62, distortion=distortion)
    a = np.pi / max(n // 2, 1)  # half a step around the vertical axis
    turn = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    inner_c2w = np.concatenate([turn @ inner.c2w[:, :, :3], (turn @ inner.c2w[:, :, 3:])], -1)
    names = [f"{i:03d}.png" for i in range(n)]
    return Cameras.create(np.concatenate([outer.K, inner.K]), np.concatenate([outer.c2w, inner_c2w]),
                          [width] * n, [height] * n, names, names, np.concatenate([outer.dist, inner.dist]))


def scaled_copies(cams: Cameras, scales: int) -> Cameras:
    """``cams``, then ``cams`` at 1/2, 1/4, ... of the size (``scales`` sizes in all), named ``d2/NAME``, ...

    Names sort by scale (``000.png`` < ``d2/000.png``), so every size's cameras are in one run of the
    sorted list and, with a number of cameras that ``test_every`` divides, the same cameras are held out.
    """
    parts = [cams]
    for s in range(1, scales):
        step = 2 ** s
        small = cams.scaled(1 / step)
        names = tuple(f"d{step}/{n}" for n in cams.names)
        parts.append(small.replace(names=names, image_paths=names))
    if scales == 1:
        return cams
    return Cameras.create(np.concatenate([p.K for p in parts]), np.concatenate([p.c2w for p in parts]),
                          np.concatenate([p.width for p in parts]), np.concatenate([p.height for p in parts]),
                          sum((list(p.image_paths) for p in parts), []), sum((list(p.names) for p in parts), []),
                          np.concatenate([p.dist for p in parts]))


def downscale(img: np.ndarray, step: int, any_part: bool = False) -> np.ndarray:
    """(H, W, ...) image -> (H/step, W/step, ...): the mean of each step x step block (uint8 rounded), or with
    ``any_part`` (bool images) whether any pixel of the block is set.

    Example:
        >>> downscale(np.array([[0, 2], [4, 255]], np.uint8), 2).tolist()
        [[65]]
    """
    h, w = img.shape[0] // step, img.shape[1] // step
    blocks = img[:h * step, :w * step].reshape(h, step, w, step, *img.shape[2:])
    if any_part:
        return blocks.any(axis=(1, 3))
    return np.round(blocks.astype(np.float64).mean(axis=(1, 3))).astype(np.uint8)


def intruder_of(cameras: Cameras, i: int) -> tuple[np.ndarray, float] | None:
    """The passer-by of camera ``i`` (every third camera, from the third on): a sphere 1.2 units in front of
    it, off its axis (its position differs in every view, so it belongs to no consistent scene)."""
    if i % 3 != 2:
        return None
    c2w = cameras.c2w[i]
    return c2w[:, 3] + c2w[:, :3] @ np.array([0.25, 0.1, 1.2]), 0.22


def image_relpath(fmt: str, name: str) -> str:
    """Where each format keeps the image of camera ``name`` (``000.png``)."""
    if fmt == "easymocap":
        return f"images/{Path(name).stem}/000000.png"
    return f"images/{name}"


MAX_SIDE = 8192
MAX_IMAGES = 10_000


MAX_SCALES = 4
SCALE_TEST_EVERY = 8
"""With ``--scales``, the number of cameras must be a multiple of the default ``data.test_every``, so that
every scale holds out the same cameras (a camera held out at full size and trained on at half size
would be scored on what it was trained on)."""


def check_example_options(fmt: str, n_images: int, width: int, height: int, distortion: float,
                          exposure: float = 0.0, scales: int = 1) -> None:
    """One UserError for an example the options cannot make (before anything is written)."""
    if not 1 <= scales <= MAX_SCALES:
        raise UserError(f"--scales must be from 1 to {MAX_SCALES}, got {scales}")
    if scales > 1:
        step = 2 ** (scales - 1)
        if fmt not in ("colmap", "transforms"):
            raise UserError(f"--scales: the {fmt} format cannot list images in subfolders",
                            hint="use --format colmap or transforms")
        if width % step or height % step:
            raise UserError(f"--scales {scales}: width and height must be multiples of {step}, got {width}x{height}",
                            hint=f"e.g. --size {max(step, width - width % step)}x{max(step, height - height % step)}")
        if n_images % SCALE_TEST_EVERY:
            raise UserError(f"--scales: --images must be a multiple of {SCALE_TEST_EVERY} (got {n_images}), so "
                            "that the default split (data.test_every=8) holds out the same cameras at every scale")
    if not (np.isfinite(exposure) and 0 <= exposure <= 4):
        raise UserError(f"--exposure must be from 0 to 4 stops, got {exposure}")
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'", hint=f"choose one of: {', '.join(FORMATS)}")
    if fmt == "llff" and distortion:
        raise UserError("LLFF cannot store lens distortion", hint="use --format colmap for a distorted scene")
    if not 2 <= n_images <= MAX_IMAGES:
        raise UserError(f"--images must be from 2 to {MAX_IMAGES}, got {n_images}")
    if not (4 <= width <= MAX_SIDE and 4 <= height <= MAX_SIDE):
        raise UserError(f"--size {width}x{height}: each side must be from 4 to {MAX_SIDE}")
    if not (np.isfinite(distortion) and abs(distortion) <= 1):
        raise UserError(f"--distortion must be a radial k1 in [-1, 1], got {distortion}")


def make_example(out: str | Path, fmt: str = "colmap", n_images: int = 24, width: int = 64,
                 height: int = 48, distortion: float = 0.0, colmap_binary: bool = True,
                 progress=None, texture: bool = False, exposure: float = 0.0, intruders: bool = False,
                 scales: int = 1) -> Cameras:
    """Write the example scene to ``out`` in format ``fmt``.

    Writes the images, the camera file(s) of the format, ``depth/<name>.npy``
    (float32 z-depth in scene units) and ``example.json`` (what was made).

    Args:
        distortion: radial k1 of the cameras (k2 = k1 / 4); not for ``llff``.
        progress: optional callable called once per rendered image.
        texture: add non-repeating surface detail, so that feature matchers (SIFT) find
            distinct points; the plain scene's checkers repeat too regularly for them.
        exposure: the capture is walked twice (:func:`two_pass_cameras`) and the light changes by this
            many stops between the passes (:func:`exposure_gains`); 0: one pass, one exposure.
        intruders: a passer-by (a magenta sphere) in every third photo (:func:`intruder_of`), and
            ``masks/NAME.png`` for those photos (0 where it is: the pixels to ignore).
        scales: each photo also at 1/2, 1/4, ... of its size (``scales`` sizes in all; area-averaged from
            the full-size photo, as mip-NeRF's multi-scale data), as images ``d2/NAME``, ``d4/NAME``, ...
            with their own cameras: the data anti-aliasing (``model.encoding.integrated``) learns from.
    Returns:
        The cameras in the scene's world (OpenCV axes), the full-size ones first.
    """
    out = Path(out)
    check_example_options(fmt, n_images, width, height, distortion, exposure, scales)
    check_example_folder(out)
    try:
        return _write_example(out, fmt, n_images, width, height, distortion, colmap_binary, progress, texture,
                              exposure, intruders, scales)
    except OSError as e:
        if is_disk_full(e):
            raise UserError(f"the disk is full: the example scene in {out} is incomplete",
                            hint="free some space and run the same command again") from e
        raise UserError(f"cannot write the example scene into {out}: {e.strerror or e}") from e


def check_example_folder(out: Path) -> None:
    """Refuse to write the example into a folder that holds files of someone else's (an example scene,
    recognized by its example.json, is written over)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder", hint="give a folder for the example scene")
    if out.is_dir() and not (out / "example.json").is_file():
        refuse_foreign(out, files_below(out, limit=1000), "the example scene is written only into a new or "
                       "empty folder, or over an earlier example", hint="give another folder")


def _write_example(out: Path, fmt: str, n_images: int, width: int, height: int, distortion: float,
                   colmap_binary: bool, progress, texture: bool, exposure: float = 0.0,
                   intruders: bool = False, scales: int = 1) -> Cameras:
    info = {"format": fmt, "images": n_images, "width": width, "height": height, "distortion": distortion,
            "texture": texture, "exposure": exposure, "intruders": intruders, "scales": scales,
            "world_up": [0, 0, 1], "enclosure_radius": ENCLOSURE_RADIUS}
    out.mkdir(parents=True, exist_ok=True)
    # first: the folder is an example's (a killed run can be run again); "complete" once all is written
    atomic_write_text(out / "example.json", json.dumps({**info, "complete": False}, indent=2) + "\n")
    cams = (two_pass_cameras(n_images, width, height, distortion) if exposure
            else ring_cameras(n_images, width, height, distortion=distortion))
    gains = exposure_gains(len(cams), exposure)
    cams = scaled_copies(cams, scales)
    rel = [image_relpath(fmt, n) for n in cams.names]
    n_full = len(cams) // scales
    depth_ranges = [None] * len(cams)
    for j in range(n_full):
        intruder = intruder_of(cams, j) if intruders else None
        full, depth, covered_full = render_view(cams, j, texture, float(gains[j]), intruder)
        for s in range(scales):  # smaller sizes: the full-size photo area-averaged; depth at their pixel centres
            i, step = j + s * n_full, 2 ** s
            img, covered = (full, covered_full) if s == 0 else (downscale(full, step),
                                                                downscale(covered_full, step, any_part=True))
            depth = depth if s == 0 else render_view(cams, i)[1]
            write_image(out / rel[i], img)
            if intruder is not None:
                write_mask(mask_candidates(out, out / rel[i])[0], ~covered)  # masks/ in place of images/
            depth_path = out / "depth" / Path(cams.names[i]).with_suffix(".npy")
            depth_path.parent.mkdir(parents=True, exist_ok=True)
            np.save(depth_path, depth)
            depth_ranges[i] = (float(depth.min()), float(depth.max()))
        if progress:
            progress()
    if fmt == "colmap":
        colmap.write(out, cams, binary=colmap_binary)
    elif fmt == "llff":
        llff.write(out, cams, np.array(depth_ranges))
    elif fmt == "transforms":
        transforms.write(out, cams, rel)
    else:
        easymocap.write(out, cams.replace(names=tuple(Path(n).stem for n in cams.names)))
    atomic_write_text(out / "example.json", json.dumps({**info, "complete": True}, indent=2) + "\n")
    return cams.replace(image_paths=tuple(out / r for r in rel))
