"""What the web viewer does, without a browser or a server: frames for a camera within a time budget,
rendered in chunks that can be spread between training steps; the newest checkpoint of a run; camera
paths drawn from keyframes and saved as files that ``mip360 render --path`` reads.

Cameras here are in the run's normalized scene with OpenCV axes (x right, y down, z forward), +z up,
like everything inside mip360; viser's cameras use the same axes.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..data.cameras import intrinsics_from_fov, quaternion_to_rotation, rotation_to_quaternion, slerp
from ..model.model import chunk_rays, load_plain_state, render_rays
from ..runs import checkpoints as ckpt
from ..runs.camera_paths import camera_path_json, save_path_file
from ..runs.views import camera_rays
from ..runs.writers import depth_range, depth_to_color, to_uint8

MODES = ("rgb", "mean depth", "median depth")


@dataclass(frozen=True)
class ViewCamera:
    """A pinhole camera of the viewer: c2w (3, 4) OpenCV axes, normalized scene; vertical fov in radians."""

    c2w: np.ndarray
    fov_y: float
    aspect: float = 4 / 3

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        """(3, 3) K with square pixels and the principal point at the center (as camera-path files)."""
        return intrinsics_from_fov(self.fov_y, width, height)


def camera_from_viser(wxyz, position, fov: float, aspect: float) -> ViewCamera:
    """A viser client camera (``P_world = R p_camera + t``, OpenCV axes) as a :class:`ViewCamera`."""
    R = quaternion_to_rotation(np.asarray(wxyz, float))
    return ViewCamera(np.concatenate([R, np.asarray(position, float)[:, None]], 1), float(fov), float(aspect))


def viser_pose(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz, position) of an OpenCV camera-to-world, for viser."""
    return rotation_to_quaternion(c2w[:, :3]), c2w[:, 3].copy()


def frame_size(aspect: float, pixels: float, max_side: int, min_side: int = 16) -> tuple[int, int]:
    """(width, height) of about ``pixels`` pixels with this aspect, the longer side at most ``max_side``.

    Example:
        >>> frame_size(2.0, 5000, 1024)
        (100, 50)
        >>> frame_size(2.0, 1e9, 512)
        (512, 256)
    """
    pixels = min(max(pixels, 1.0), float(max_side) ** 2 * max(aspect, 1 / aspect))  # no more than fits the cap
    h = math.sqrt(pixels / aspect)
    w = h * aspect
    s = min(1.0, max_side / max(w, h))
    w, h = w * s, h * s
    grow = max(1.0, min_side / min(w, h))
    return max(1, int(round(w * grow))), max(1, int(round(h * grow)))


def colorize(out: dict[str, np.ndarray], mode: str) -> np.ndarray:
    """(H, W, 3) uint8 of one rendered frame: RGB, or mean/median depth in the turbo colormap with the
    frame's own range (as ``mip360 render`` colors a one-frame path)."""
    if mode == "rgb":
        return to_uint8(out["rgb"])
    depth = out["mean_depth" if mode == "mean depth" else "median_depth"]
    return depth_to_color(depth, *depth_range([depth]))


class RenderJob:
    """One frame rendered chunk by chunk, so that its work can be spread over time.

    Args:
        model: the Mip360 model (eval semantics: deterministic sampling, no gradients).
        camera, width, height: what to render; chunk: rays per piece of work.
    """

    def __init__(self, model, camera: ViewCamera, width: int, height: int, chunk: int, device: torch.device,
                 mode: str = "rgb", tag: object = None):
        self.model, self.camera, self.width, self.height, self.chunk = model, camera, width, height, chunk
        self.device, self.mode, self.tag = device, mode, tag
        self.rays = camera_rays(camera.intrinsics(width, height), camera.c2w, None, width, height, device)
        self.done_rays = 0
        self.parts: dict[str, list[torch.Tensor]] = {"rgb": [], "mean_depth": [], "median_depth": []}
        self.seconds = 0.0

    @property
    def finished(self) -> bool:
        return self.done_rays >= self.width * self.height

    def advance(self, seconds: float) -> bool:
        """Render chunks until ``seconds`` are used (at least one chunk); True when the frame is done."""
        t0 = time.perf_counter()
        n = self.width * self.height
        while not self.finished:
            a, b = self.done_rays, min(self.done_rays + self.chunk, n)
            pad_to = self.chunk if getattr(self.model, "compiled", False) else 0  # one shape: no recompiles
            o, d, vd, radii = (x[a:b] for x in self.rays)
            out = render_rays(self.model, o, d, vd, chunk=self.chunk, depth=self.mode != "rgb", pad_to=pad_to,
                              radii=radii)
            for k in self.parts:
                if k in out:
                    self.parts[k].append(out[k].float().cpu())
            self.done_rays = b
            if time.perf_counter() - t0 >= seconds:
                break
        self.seconds += time.perf_counter() - t0
        return self.finished

    def outputs(self) -> dict[str, np.ndarray]:
        """rgb (H, W, 3) and, unless the mode is rgb, mean_depth and median_depth (H, W)."""
        return {k: torch.cat(v).numpy().reshape(self.height, self.width, *(3,) * (k == "rgb"))
                for k, v in self.parts.items() if v}

    def image(self) -> np.ndarray:
        return colorize(self.outputs(), self.mode)


@dataclass
class Request:
    """The latest view a client asked for."""

    camera: ViewCamera
    max_side: int
    moved_at: float
    refined: bool = False


class ViewerCore:
    """Frames for the viewer's clients within a time budget, and the run's newest checkpoint.

    A camera that moves gets a frame of about ``budget_s * rays_per_s`` pixels (the rate measured
    on earlier frames); once it has been still for ``settle_s``, the same view is rendered at the
    client's full size (at most ``max_side``). :meth:`work` advances the pending frames for a given
    time and returns the finished ones; it is called by a thread (``mip360 view``) or between
    training steps (``mip360 train --viewer``).

    Args:
        model: the Mip360 model shown; lock: held while rendering (and by whoever swaps weights).
        run: the run folder, when checkpoints should be reloaded as they appear (else None).
    """

    def __init__(self, model, device: torch.device, chunk: int | str = "auto", budget_s: float = 0.1,
                 max_side: int = 1024, settle_s: float = 0.25, run: Path | None = None,
                 checkpoint_step: int | None = None, lock: threading.Lock | None = None):
        # small pieces of work, so that a frame's time can be spread between training steps
        self.model, self.device, self.chunk = model, device, min(chunk_rays(chunk, model, device), 4096)
        self.budget_s, self.max_side, self.settle_s = budget_s, max_side, settle_s
        self.mode = "rgb"
        self.rays_per_s = 20_000.0  # first guess; measured from then on
        self.requests: dict[object, Request] = {}
        self.jobs: dict[object, RenderJob] = {}
        self.lock = lock or threading.Lock()
        self.run, self.checkpoint_step = run, checkpoint_step
        self._ckpt_key: tuple | None = None
        self.frames_rendered = 0

    # -- requests and work

    def request(self, client: object, camera: ViewCamera, max_side: int | None = None) -> None:
        """Client ``client`` now looks through ``camera`` (it moved): a quick frame first."""
        self.requests[client] = Request(camera, max_side or self.max_side, time.monotonic())
        self.jobs.pop(client, None)  # a frame of the old view is not worth finishing

    def forget(self, client: object) -> None:
        self.requests.pop(client, None)
        self.jobs.pop(client, None)

    def moving_size(self, camera: ViewCamera, max_side: int) -> tuple[int, int]:
        """The frame size for a moving camera: what the measured rate renders within the budget."""
        return frame_size(camera.aspect, self.budget_s * self.rays_per_s, min(max_side, self.max_side))

    def _start_jobs(self, now: float) -> None:
        for client, req in list(self.requests.items()):  # the server thread may add clients meanwhile
            if client in self.jobs:
                continue
            if not req.refined and req.moved_at is not None:
                still = now - req.moved_at >= self.settle_s
                size = (frame_size(req.camera.aspect, float("inf"), min(req.max_side, self.max_side)) if still
                        else self.moving_size(req.camera, req.max_side))
                self.jobs[client] = RenderJob(self.model, req.camera, *size, self.chunk, self.device, self.mode,
                                              tag=("full" if still else "quick", req.moved_at))

    def pending(self) -> bool:
        self._start_jobs(time.monotonic())
        return bool(self.jobs)

    def work(self, seconds: float) -> list[tuple[object, np.ndarray, RenderJob]]:
        """Advance pending frames for about ``seconds`` (at least one chunk when any is pending);
        return (client, image, job) of each frame finished."""
        finished = []
        t0 = time.perf_counter()
        self._start_jobs(time.monotonic())
        with self.lock:
            for client, job in list(self.jobs.items()):
                left = seconds - (time.perf_counter() - t0)
                if job.advance(max(left, 0.0)):
                    self.jobs.pop(client, None)
                    self.frames_rendered += 1
                    rays = job.width * job.height
                    if job.seconds > 0:
                        rate = rays / job.seconds
                        self.rays_per_s = 0.5 * self.rays_per_s + 0.5 * rate
                    req = self.requests.get(client)
                    if req is not None and job.tag[0] == "full" and job.tag[1] == req.moved_at:
                        req.refined = True  # the still view is done until the camera moves again
                    finished.append((client, job.image(), job))
                if time.perf_counter() - t0 >= seconds:
                    break
        return finished

    def render_now(self, camera: ViewCamera, width: int, height: int, mode: str = "rgb") -> np.ndarray:
        """One frame at once (path previews, tests): (H, W, 3) uint8."""
        job = RenderJob(self.model, camera, width, height, self.chunk, self.device, mode)
        with self.lock:
            job.advance(float("inf"))
        return job.image()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode}")
        self.mode = mode
        self.refresh()

    def refresh(self) -> None:
        """Render every client's view again (new weights, new mode)."""
        self.jobs.clear()
        for req in list(self.requests.values()):
            req.refined, req.moved_at = False, time.monotonic() - self.settle_s

    # -- the newest checkpoint of a run

    def reload_if_newer(self) -> bool:
        """Load the run's newest checkpoint when it is not the one shown; True when weights changed."""
        if self.run is None:
            return False
        found = ckpt.list_checkpoints(self.run)
        if not found:
            return False
        step, path = found[-1]
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed by the training's keep_checkpoints between list and stat
            return False
        key = (step, stat.st_size, stat.st_mtime_ns)
        if self._ckpt_key is None and step == self.checkpoint_step:
            self._ckpt_key = key  # the one loaded at start
            return False
        if key == self._ckpt_key:
            return False
        state = ckpt.load_checkpoint(path)
        with self.lock:
            try:
                load_plain_state(self.model, state["model"])
            except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as e:
                raise UserError(f"checkpoint {path} does not fit the model shown ({type(e).__name__})") from None
        self._ckpt_key, self.checkpoint_step = key, int(state["step"])
        self.refresh()
        return True


# ----------------------------------------------------------------------------- camera paths


def _catmull_rom(p0, p1, p2, p3, t: float) -> np.ndarray:
    """Uniform Catmull-Rom between p1 (t=0) and p2 (t=1)."""
    t2, t3 = t * t, t * t * t
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (3 * p1 - p0 - 3 * p2 + p3) * t3)


@dataclass
class CameraPath:
    """Keyframes drawn in the viewer and the path through them.

    Positions follow a Catmull-Rom spline through the keyframes, rotations are slerped and the
    field of view interpolated linearly; ``fov_deg`` > 0 overrides every keyframe's own.
    """

    keyframes: list[ViewCamera] = field(default_factory=list)
    duration_s: float = 4.0
    fps: float = 30.0
    width: int = 640
    height: int = 480
    fov_deg: float = 0.0
    loop: bool = False

    def add(self, camera: ViewCamera) -> None:
        self.keyframes.append(camera)

    def delete(self, i: int) -> None:
        del self.keyframes[i]

    def move(self, i: int, j: int) -> None:
        """Put keyframe ``i`` at position ``j``."""
        self.keyframes.insert(j, self.keyframes.pop(i))

    def n_frames(self) -> int:
        return max(1, int(round(self.duration_s * self.fps)))

    def frames(self) -> list[ViewCamera]:
        """The path's cameras, ``n_frames()`` of them, through every keyframe in order."""
        keys = self.keyframes
        if not keys:
            raise UserError("the camera path has no keyframes", hint="add keyframes at the views you want")
        n = self.n_frames()
        if len(keys) == 1:
            return [self._with_fov(keys[0], keys[0].fov_y)] * n
        pos = [k.c2w[:, 3] for k in keys]
        quats = [rotation_to_quaternion(k.c2w[:, :3]) for k in keys]
        segments = len(keys) if self.loop else len(keys) - 1
        out = []
        for f in range(n):
            x = f * segments / n if self.loop else (f * segments / (n - 1) if n > 1 else 0.0)
            i = min(int(x), segments - 1)
            t = x - i
            idx = [(i + d) % len(keys) if self.loop else min(max(i + d, 0), len(keys) - 1) for d in (-1, 0, 1, 2)]
            p = _catmull_rom(*(pos[j] for j in idx), t)
            R = quaternion_to_rotation(slerp(quats[idx[1]], quats[idx[2]], t))
            fov = (1 - t) * keys[idx[1]].fov_y + t * keys[idx[2]].fov_y
            out.append(self._with_fov(ViewCamera(np.concatenate([R, p[:, None]], 1), fov,
                                                 self.width / self.height), fov))
        return out

    def _with_fov(self, cam: ViewCamera, fov: float) -> ViewCamera:
        fov = math.radians(self.fov_deg) if self.fov_deg > 0 else fov
        return ViewCamera(cam.c2w, fov, self.width / self.height)

    def save(self, path: Path, fmt: str, transform: np.ndarray) -> Path:
        """Write the path as ``fmt`` (nerfstudio | mip360) JSON, atomically (``runs.camera_paths``).

        Args:
            transform: (4, 4) input-to-normalized transform of the run (cameras.json).
        """
        frames = [(c.c2w, c.fov_y) for c in self.frames()]
        keys = [(k.c2w, k.fov_y) for k in self.keyframes]
        return save_path_file(path, camera_path_json(frames, self.width, self.height, self.fps, fmt, transform, keys))


__all__ = ["MODES", "ViewCamera", "ViewerCore", "RenderJob", "CameraPath", "camera_from_viser", "viser_pose",
           "frame_size", "colorize"]
