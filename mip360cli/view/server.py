"""The viser web viewer around :class:`~mip360cli.view.core.ViewerCore`: frustums of the training
cameras with their photos, the model rendered from the browser's camera, output and budget controls,
and a camera-path editor that saves files ``mip360 render --path`` reads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.progress import info, warn
from ..data.cameras import fov_from_focal
from ..runs.hooks import TrainContext, TrainHook
from ..runs.views import MAX_SIDE
from .core import MODES, CameraPath, ViewCamera, ViewerCore, camera_from_viser, viser_pose

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ShownCameras:
    """Training cameras to draw: (N, 3, 3) K, (N, 3, 4) normalized c2w, sizes, photo paths."""

    K: np.ndarray
    c2w: np.ndarray
    width: np.ndarray
    height: np.ndarray
    image_paths: list[str]

    @classmethod
    def training(cls, cameras, train: np.ndarray) -> "ShownCameras":
        """The training cameras of a run or cache (all of them when there is no split)."""
        cams = cameras.select(train) if len(train) else cameras
        return cls(cams.K, cams.c2w, cams.width, cams.height, [str(p) for p in cams.image_paths])


def check_host(host: str) -> None:
    """Say so when the viewer is reachable from other machines."""
    if host not in LOCAL_HOSTS:
        warn(f"the viewer listens on {host}: anyone who can reach this port can see the scene and make this "
             "machine render (use --host 127.0.0.1, the default, and an SSH tunnel to view it remotely)")


def check_address(host: str, port: int, flag: str = "--") -> None:
    """Refuse an address the viewer cannot listen on (viser's server thread would wait forever): a port
    outside 1-65535, a host that is not an address of this machine. A port in use is fine: the viewer
    takes the next free one."""
    import errno
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"{flag}port {port}: a port is a number from 1 to 65535", hint="the default is 7007")
    try:
        family, kind, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise UserError(f"{flag}host {host!r} is not an address ({getattr(e, 'strerror', None) or e})",
                        hint="use 127.0.0.1 (this machine only), 0.0.0.0 (every network) or one of its addresses") \
            from None
    with socket.socket(family, kind) as probe:
        try:
            probe.bind(addr)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise UserError(f"the viewer cannot listen on {host}:{port} ({e.strerror})",
                                hint="use 127.0.0.1, 0.0.0.0 or an address of this machine, and a port above "
                                     "1023 unless you are root") from None


def _import_viser():
    try:
        import viser
    except ImportError:
        raise UserError("the viewer needs the viser package", hint='pip install "mip360cli[viewer]"') from None
    return viser


def _thumbnail(path: str, width: int = 160) -> np.ndarray | None:
    from ..data.images import read_image, resize_area

    try:
        img = read_image(Path(path))
    except Exception:  # noqa: BLE001 - a missing photo only loses its thumbnail
        return None
    h, w = img.shape[:2]
    if w > width:
        img = resize_area(img, width, max(1, round(h * width / w)))
    return img[..., :3]


class Viewer:
    """A viser server showing ``core``'s model; call :meth:`work` to render (a thread does it when
    ``background`` is true, as in ``mip360 view``; training calls it between steps).

    Args:
        core: renders frames; cameras: the training cameras to draw (subsampled to ``max_frustums``);
        transform: the run's input-to-normalized transform (for nerfstudio camera paths);
        paths_dir: where the camera-path editor saves.
    """

    def __init__(self, core: ViewerCore, cameras: ShownCameras, transform: np.ndarray, paths_dir: Path,
                 host: str = "127.0.0.1", port: int = 7007, background: bool = True, max_frustums: int = 300,
                 title: str = "mip360"):
        viser = _import_viser()
        check_address(host, port)
        check_host(host)
        self.core, self.cameras, self.transform, self.paths_dir = core, cameras, transform, paths_dir
        self.path = CameraPath()
        self.server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        self.host, self.port = host, self.server.get_port()
        self.server.scene.set_up_direction("+z")
        self.clients: dict[int, object] = {}
        self._stop = threading.Event()
        self._frustum_handles: list = []
        self._key_handles: list = []
        self._preview: list[ViewCamera] | None = None
        self._shown: list = []  # (name, scene handle, checkbox) of drawn exports
        self._build_gui()
        self._draw_cameras(max_frustums)
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(lambda client: (self.clients.pop(client.client_id, None),
                                                         self.core.forget(client.client_id)))
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="mip360-viewer", daemon=True)
            self._thread.start()

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "127.0.0.1") else self.host
        return f"http://{host}:{self.port}"

    # -- scene

    def _draw_cameras(self, max_frustums: int) -> None:
        cams = self.cameras
        n = len(cams.c2w)
        pick = np.unique(np.linspace(0, n - 1, min(n, max_frustums)).round().astype(int)) if n else []
        extent = np.abs(cams.c2w[:, :, 3]).max() if n else 1.0
        scale = 0.05 * float(extent)
        for i in pick:
            h, w = float(cams.height[i]), float(cams.width[i])
            fov = fov_from_focal(float(cams.K[i][1, 1]), h)
            wxyz, pos = viser_pose(cams.c2w[i])
            handle = self.server.scene.add_camera_frustum(
                f"/training/{i:05d}", fov=fov, aspect=w / h, scale=scale, wxyz=wxyz, position=pos,
                color=(120, 120, 120), thickness=0.003 * float(extent))
            self._frustum_handles.append((handle, cams.image_paths[i]))

        def load_thumbnails():  # in the background: thousands of photos must not delay the first frame
            for handle, path in self._frustum_handles:
                if self._stop.is_set():
                    return
                thumb = _thumbnail(path)
                if thumb is not None:
                    handle.image = thumb

        self._thumbnails = threading.Thread(target=load_thumbnails, name="mip360-thumbnails", daemon=True)
        self._thumbnails.start()

    def show_geometry(self, name: str, geometry: dict) -> None:
        """Draw a mesh or point cloud (``read_geometry``'s dict, in the normalized scene) with a checkbox to
        hide it."""
        v, c, f = geometry["vertices"], geometry["colors"], geometry["faces"]
        node = f"/exports/{len(self._shown)}"
        if f is None:
            extent = float(np.abs(v).max()) if len(v) else 1.0
            handle = self.server.scene.add_point_cloud(node, v, c, point_size=0.004 * extent)
        else:
            import trimesh

            handle = self.server.scene.add_mesh_trimesh(node, trimesh.Trimesh(v, f, vertex_colors=c, process=False))
        box = self.server.gui.add_checkbox(f"show {name}", True)
        box.on_update(lambda _: setattr(handle, "visible", box.value))
        self._shown.append((name, handle, box))

    def _on_connect(self, client) -> None:
        self.clients[client.client_id] = client
        if len(self.cameras.c2w):  # start at the first training camera
            wxyz, pos = viser_pose(self.cameras.c2w[0])
            client.camera.wxyz, client.camera.position = wxyz, pos
            client.camera.look_at = pos + self.cameras.c2w[0][:, 2]
            client.camera.fov = fov_from_focal(float(self.cameras.K[0][1, 1]), float(self.cameras.height[0]))

        def request(_=None) -> None:
            self.core.request(client.client_id, self._client_camera(client), self._client_side(client))

        client.camera.on_update(request)
        try:
            request()
        except AssertionError:  # the browser has not sent its camera yet: on_update will
            pass

    @staticmethod
    def _client_camera(client) -> ViewCamera:
        cam = client.camera
        return camera_from_viser(cam.wxyz, cam.position, cam.fov, cam.aspect)

    def _client_side(self, client) -> int:
        try:
            return max(int(client.camera.image_width), int(client.camera.image_height))
        except (AttributeError, AssertionError, ValueError):
            return self.core.max_side

    # -- controls

    def _build_gui(self) -> None:
        gui = self.server.gui
        core = self.core
        self.status = gui.add_markdown("starting")
        mode = gui.add_dropdown("output", MODES, initial_value=core.mode,
                                hint="RGB, or mean / median depth (turbo colormap, near = red)")
        mode.on_update(lambda _: core.set_mode(mode.value))
        budget = gui.add_slider("frame budget (ms)", 10, 1000, 10, int(core.budget_s * 1000),
                                hint="time for a frame while the camera moves; it is refined when it stops")
        budget.on_update(lambda _: setattr(core, "budget_s", budget.value / 1000))
        side = gui.add_slider("max resolution", 64, 4096, 64, core.max_side, hint="longest side of a still frame")

        def set_side(_):
            core.max_side = int(side.value)
            core.refresh()

        side.on_update(set_side)

        with gui.add_folder("camera path"):
            self.keys = gui.add_dropdown("keyframes", ["(none)"], hint="the keyframe that move/delete act on")
            add = gui.add_button("add keyframe at this view")
            up = gui.add_button("move earlier")
            down = gui.add_button("move later")
            delete = gui.add_button("delete keyframe")
            duration = gui.add_number("duration (s)", self.path.duration_s, min=0.1, step=0.1)
            fps = gui.add_number("fps", self.path.fps, min=1, max=240, step=1)
            size = gui.add_vector2("resolution", (self.path.width, self.path.height), min=(16, 16), step=1)
            fov = gui.add_number("fov (deg, 0 = keyframes')", 0.0, min=0.0, max=179.0, step=1.0)
            loop = gui.add_checkbox("loop", False)
            preview = gui.add_button("preview path")
            name = gui.add_text("file name", "camera_path")
            fmt = gui.add_dropdown("format", ("nerfstudio", "mip360"), initial_value="nerfstudio")
            save = gui.add_button("save")
            self.saved = gui.add_markdown("")

        def sync_settings(_=None):
            self.path.duration_s, self.path.fps = float(duration.value), float(fps.value)
            self.path.width, self.path.height = int(size.value[0]), int(size.value[1])
            self.path.fov_deg, self.path.loop = float(fov.value), bool(loop.value)

        for handle in (duration, fps, size, fov, loop):
            handle.on_update(sync_settings)

        def selected() -> int | None:
            if not self.path.keyframes or not self.keys.value.startswith("keyframe "):
                return None
            return int(self.keys.value.split()[1]) - 1

        @add.on_click
        def _(event) -> None:
            if event.client is not None:
                self.path.add(self._client_camera(event.client))
                self._show_keyframes(len(self.path.keyframes) - 1)

        @up.on_click
        def _(_) -> None:
            i = selected()
            if i:
                self.path.move(i, i - 1)
                self._show_keyframes(i - 1)

        @down.on_click
        def _(_) -> None:
            i = selected()
            if i is not None and i < len(self.path.keyframes) - 1:
                self.path.move(i, i + 1)
                self._show_keyframes(i + 1)

        @delete.on_click
        def _(_) -> None:
            i = selected()
            if i is not None:
                self.path.delete(i)
                self._show_keyframes(min(i, len(self.path.keyframes) - 1))

        @preview.on_click
        def _(event) -> None:
            sync_settings()
            if self.path.keyframes and event.client is not None:
                self._preview_on(event.client)

        @save.on_click
        def _(_) -> None:
            sync_settings()
            try:
                out = self.save_path(str(name.value), str(fmt.value))
                self.saved.content = f"saved `{out}`"
                info(f"camera path saved: {out} (render it with: mip360 render RUN --path {out})")
            except UserError as e:
                self.saved.content = f"not saved: {e}"

    def save_path(self, name: str, fmt: str) -> Path:
        """Save the current camera path as RUN/camera_paths/NAME.json in ``fmt``."""
        stem = Path(name.strip() or "camera_path").name
        out = self.paths_dir / (stem if stem.endswith(".json") else f"{stem}.json")
        return self.path.save(out, fmt, self.transform)

    def _show_keyframes(self, select: int | None = None) -> None:
        for h in self._key_handles:
            h.remove()
        self._key_handles = []
        extent = float(np.abs(self.cameras.c2w[:, :, 3]).max()) if len(self.cameras.c2w) else 1.0
        for i, k in enumerate(self.path.keyframes):
            wxyz, pos = viser_pose(k.c2w)
            self._key_handles.append(self.server.scene.add_camera_frustum(
                f"/keyframes/{i:03d}", fov=k.fov_y, aspect=k.aspect, scale=0.08 * extent, wxyz=wxyz, position=pos,
                color=(255, 140, 0), thickness=0.006 * extent))
        options = [f"keyframe {i + 1}" for i in range(len(self.path.keyframes))] or ["(none)"]
        self.keys.options = options
        self.keys.value = options[select] if select is not None and 0 <= select < len(options) else options[-1]

    def _preview_on(self, client) -> None:
        """Move the client's camera along the path at its fps (frames render as the camera moves)."""
        frames = self.path.frames()

        def play():
            for cam in frames:
                if self._stop.is_set() or client.client_id not in self.clients:
                    return
                wxyz, pos = viser_pose(cam.c2w)
                with client.atomic():
                    client.camera.wxyz, client.camera.position = wxyz, pos
                    client.camera.fov = cam.fov_y
                time.sleep(1 / max(self.path.fps, 1))

        threading.Thread(target=play, name="mip360-preview", daemon=True).start()

    # -- rendering

    def work(self, seconds: float) -> int:
        """Render for about ``seconds``; send finished frames to their clients. Returns frames sent."""
        done = self.core.work(seconds)
        for client_id, image, job in done:
            client = self.clients.get(client_id)
            if client is not None:
                client.scene.set_background_image(image, format="jpeg", jpeg_quality=90)
        if done:
            _, _, job = done[-1]
            step = self.core.checkpoint_step
            self.status.content = (f"**{job.width}x{job.height}** {self.core.mode}, {job.seconds * 1000:.0f} ms"
                                   + (f" · step {step}" if step is not None else ""))
        return len(done)

    def _loop(self) -> None:
        last_check = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_check > 2.0:
                last_check = now
                try:
                    if self.core.reload_if_newer():
                        info(f"viewer: loaded the checkpoint of step {self.core.checkpoint_step}")
                except UserError as e:
                    warn(f"viewer: {e}")
            if self.core.pending():
                self.work(0.05)
            else:
                time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._thumbnails):
            if thread is not None:
                thread.join(timeout=5)
        self.server.stop()


def check_view_options(host: str, port: int, budget_ms: int, max_res: int, chunk: int | None) -> None:
    """``mip360 view``'s options, before a run is loaded."""
    if not (1 <= budget_ms <= 60_000 and 16 <= max_res <= MAX_SIDE and (chunk is None or 1 <= chunk <= 1 << 20)):
        raise UserError(f"--budget-ms must be from 1 to 60000 (got {budget_ms}), --max-res from 16 to {MAX_SIDE} "
                        f"(got {max_res}) and --chunk from 1 to {1 << 20} (got {chunk})")
    check_address(host, port)


def serve_run(loaded, host: str, port: int, budget_ms: int, max_res: int, chunk: int | None,
              follow_checkpoints: bool) -> Viewer:
    """``mip360 view``: a viewer of a loaded run, rendering in a background thread.

    Args:
        loaded: a :class:`~mip360cli.runs.load.LoadedRun`; chunk: rays at once (None: the run's render.chunk_rays);
        follow_checkpoints: load the run's newest checkpoint as training writes it.
    """
    check_view_options(host, port, budget_ms, max_res, chunk)
    core = ViewerCore(loaded.model, loaded.device, chunk=chunk or loaded.cfg.render.chunk_rays,
                      budget_s=budget_ms / 1000, max_side=max_res, run=loaded.run if follow_checkpoints else None,
                      checkpoint_step=loaded.step)
    return Viewer(core, ShownCameras.training(loaded.cameras, loaded.train), loaded.transform,
                  loaded.folder.camera_paths, host=host, port=port, title=f"mip360 · {loaded.run.name}")


class TrainingViewer:
    """The viewer during training: it renders only between steps, for at most ``share`` of the time.

    The loop calls :meth:`between_steps` after each step: the viewer earns ``share / (1 - share)``
    of the time since its last turn and spends it (a frame may take several turns); what a turn
    overspends (one chunk, or a one-time compilation) is paid back from the next ones, up to 2 s.
    """

    def __init__(self, viewer: Viewer, share: float = 0.08, refresh_s: float = 5.0):
        self.viewer, self.share, self.refresh_s = viewer, share, refresh_s
        self.credit = 0.0
        self.last = self.refreshed = time.perf_counter()
        self.render_s = 0.0

    def between_steps(self) -> None:
        now = time.perf_counter()
        if now - self.refreshed > self.refresh_s:  # the model has changed: show it again
            self.refreshed = now
            self.viewer.core.refresh()
        self.credit = min(self.credit + (now - self.last) * self.share / (1 - self.share), 1.0)
        if self.credit > 0 and self.viewer.core.pending():
            t0 = time.perf_counter()
            self.viewer.work(self.credit)
            spent = time.perf_counter() - t0
            # Debt is paid back, but at most 2 s of it: a one-time cost (the first frame of a compiled model
            # compiles its render shape) must not silence the viewer for minutes.
            self.credit = max(self.credit - spent, -2.0)
            self.render_s += spent
        self.last = time.perf_counter()

    def close(self) -> None:
        self.viewer.close()


class ViewerHook(TrainHook):
    """``mip360 train --viewer``: the web viewer on the model being trained, rendering between steps with
    at most ``share`` of the time (:class:`TrainingViewer`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7007, budget_s: float = 0.1, share: float = 0.08):
        check_address(host, port, flag="--viewer-")  # before training starts, not after the cache is built
        self.host, self.port, self.budget_s, self.share = host, port, budget_s, share
        self.live: TrainingViewer | None = None

    def start(self, ctx: TrainContext) -> None:
        core = ViewerCore(ctx.model, ctx.device, chunk=ctx.cfg.render.chunk_rays, budget_s=self.budget_s)
        viewer = Viewer(core, ShownCameras.training(ctx.cameras, ctx.train), ctx.transform, ctx.run.camera_paths,
                        host=self.host, port=self.port, background=False, title=f"mip360 · training {ctx.run.name}")
        info(f"viewer of the training at {viewer.url}")
        self.live = TrainingViewer(viewer, share=self.share)

    def between_steps(self, step: int) -> None:
        self.live.between_steps()

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
