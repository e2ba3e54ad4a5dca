"""Mesh export: the training views' median depth and colour fused into a truncated signed distance field
(TSDF), then marching cubes (scikit-image), vertex colours, written as PLY, GLB or OBJ (trimesh).

The volume is held in blocks of ``BLOCK`` voxels a side, and only the blocks within the truncation band of
some view's surface are allocated (as Open3D's voxel block grid does), so memory follows the surface's
area, not the box's volume. Each view updates only the blocks its own surface touches.

Floaters are culled twice: a pixel is fused only when its depth agrees with what neighbouring views see
there (as for points, :func:`~mip360cli.export.points.confirmed_pixels`), and a face is kept only where at
least ``min_views`` views saw the surface (a per-voxel count of the views whose surface passed within the
truncation band).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import atomic_path, refuse_foreign
from ..core.progress import info, progress_bar
from ..runs.load import LoadedRun
from ..runs.views import View
from .points import (PLY_COMMENT, DepthOptions, PointOptions, Scratch, confirmed_pixels, depth_checks,
                     export_views, frame_comment, locked_scratch, project, render_depth_maps, unproject)

BLOCK = 16
"""Voxels along a block's side."""
MESH_FORMATS = ("ply", "glb", "obj")
MARKER = "mip360 export"
"""In every mesh mip360 writes (PLY comment, OBJ header, GLB generator): the only files ``--out`` replaces."""


@dataclass
class MeshOptions(DepthOptions):
    """How ``mip360 export --mesh`` fuses depth maps into a mesh (the command's options, same names)."""

    resolution: int = 512
    """Voxels along the longest side of the box that holds the fused surface."""
    truncation: float = 4.0
    """Half width of the band around each view's surface that is fused, in voxels."""
    min_views: int = 2
    """A pixel is fused when this many views (itself and its nearest neighbours) see its depth; a face is
    kept where this many views saw the surface."""
    components: int = 0
    """Keep the largest this many connected pieces (0: all)."""
    format: str = "ply"

    def check(self) -> None:
        """One UserError for the first value out of its range."""
        checks = [
            *depth_checks(self),
            (16 <= self.resolution <= 4096, f"--resolution must be from 16 to 4096 voxels, got {self.resolution}"),
            (0.5 <= self.truncation <= 64, f"--truncation must be from 0.5 to 64 voxels, got {self.truncation}"),
            (1 <= self.min_views <= 65, f"--min-views must be from 1 to 65, got {self.min_views}"),
            (self.bound > 0, f"--bound must be > 0 for a mesh (the fused box must be finite), got {self.bound}"),
            (0 <= self.components <= 10**9, f"--components must be >= 0 (0: keep all), got {self.components}"),
            (self.format in MESH_FORMATS, f"--format {self.format!r}: choose {', '.join(MESH_FORMATS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclass
class MeshSummary:
    path: Path
    vertices: int
    faces: int
    views: int
    blocks: int
    voxel_size: float
    culled_faces: int
    dropped_pixels: int
    components: int
    frame: str


# ----------------------------------------------------------------------------- the volume


class BlockVolume:
    """A TSDF on a regular grid (origin ``lo``, voxel size ``voxel``), stored in allocated blocks.

    Attributes:
        keys: (n,) sorted int64 keys of the allocated blocks (:meth:`key`).
        tsdf: (n, B, B, B) float16 truncated signed distance / truncation, in [-1, 1] (1 where unobserved).
        weight: (n, B, B, B) float32 number of views fused into each voxel.
        color: (n, B, B, B, 3) float16 mean colour in [0, 1].
        views: (n, B, B, B) uint16 number of views whose surface passed within the band of each voxel.
    """

    def __init__(self, lo: np.ndarray, voxel: float, dims: np.ndarray, keys: np.ndarray):
        self.lo, self.voxel, self.dims = np.asarray(lo, np.float64), float(voxel), np.asarray(dims, np.int64)
        self.blocks = -(-self.dims // BLOCK)  # blocks along each axis
        self.keys = np.unique(keys)
        n = len(self.keys)
        self.tsdf = np.ones((n, BLOCK, BLOCK, BLOCK), np.float16)
        self.weight = np.zeros((n, BLOCK, BLOCK, BLOCK), np.float32)
        self.color = np.zeros((n, BLOCK, BLOCK, BLOCK, 3), np.float16)
        self.views = np.zeros((n, BLOCK, BLOCK, BLOCK), np.uint16)

    @staticmethod
    def bytes_per_block() -> int:
        return BLOCK ** 3 * (2 + 4 + 6 + 2)

    def key(self, block: np.ndarray) -> np.ndarray:
        """(..., 3) integer block coordinates -> (...,) int64 keys (x-major)."""
        b = self.blocks
        return (block[..., 0] * b[1] + block[..., 1]) * b[2] + block[..., 2]

    def block_of_key(self, keys: np.ndarray) -> np.ndarray:
        b = self.blocks
        return np.stack([keys // (b[1] * b[2]), (keys // b[2]) % b[1], keys % b[2]], -1)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Index of each key among the allocated blocks, -1 where not allocated."""
        keys = np.asarray(keys, np.int64)
        if len(self.keys) == 0:
            return np.full(keys.shape, -1, np.int64)
        i = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[i] == keys, i, -1)

    def voxel_centers(self, index: np.ndarray) -> np.ndarray:
        """(k, B, B, B, 3) world positions of the voxel centres of blocks ``index`` (k,)."""
        corner = self.block_of_key(self.keys[index]) * BLOCK  # (k, 3) voxel coordinates
        g = np.arange(BLOCK)
        grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1)  # (B, B, B, 3)
        return self.lo + (corner[:, None, None, None, :] + grid + 0.5) * self.voxel

    def integrate(self, index: np.ndarray, view: View, depth: np.ndarray, rgb: np.ndarray, valid: np.ndarray,
                  trunc: float) -> None:
        """Fuse one view's depth into blocks ``index``: projective signed distance (z-depth difference),
        truncated to ``trunc`` (world units), running means of distance and colour.

        Args:
            depth: (H, W) z-depth; rgb: (H, W, 3) uint8; valid: (H, W) bool (pixels that may be fused).
        """
        h, w = depth.shape
        for part in np.array_split(index, max(1, len(index) // 256)):
            p = self.voxel_centers(part).reshape(-1, 3)
            u, v, z = project(p, view.K, view.c2w)
            inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            ui = np.clip(np.nan_to_num(u).astype(np.int64), 0, w - 1)
            vi = np.clip(np.nan_to_num(v).astype(np.int64), 0, h - 1)
            sdf = depth[vi, ui] - z
            use = inside & valid[vi, ui] & (sdf > -trunc)
            flat = (part[:, None].repeat(BLOCK ** 3, 1).reshape(-1), np.tile(np.arange(BLOCK ** 3), len(part)))
            b, j = flat[0][use], flat[1][use]
            t = self.tsdf.reshape(len(self.keys), -1)
            wt = self.weight.reshape(len(self.keys), -1)
            col = self.color.reshape(len(self.keys), -1, 3)
            cnt = self.views.reshape(len(self.keys), -1)
            new = np.clip(sdf[use] / trunc, -1.0, 1.0)
            old_w = wt[b, j]
            t[b, j] = ((t[b, j].astype(np.float32) * old_w + new) / (old_w + 1)).astype(np.float16)
            col[b, j] = ((col[b, j].astype(np.float32) * old_w[:, None] + rgb[vi[use], ui[use]] / 255.0)
                         / (old_w[:, None] + 1)).astype(np.float16)
            wt[b, j] = old_w + 1
            near = np.abs(sdf[use]) < trunc
            cnt[b[near], j[near]] = np.minimum(cnt[b[near], j[near]].astype(np.int64) + 1, 65535)

    def padded(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Block ``i`` with the first voxel layer of its +x, +y, +z neighbours (the cubes between blocks
        belong to the lower block): tsdf, weight, colour, views, each (B+1, B+1, B+1[, 3]); unallocated
        neighbours read as unobserved (weight 0)."""
        n = BLOCK + 1
        out_t = np.ones((n, n, n), np.float32)
        out_w = np.zeros((n, n, n), np.float32)
        out_c = np.zeros((n, n, n, 3), np.float32)
        out_v = np.zeros((n, n, n), np.int64)
        base = self.block_of_key(self.keys[i])
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    nb = base + (dx, dy, dz)
                    if np.any(nb >= self.blocks):
                        continue
                    j = int(self.find(np.array([self.key(nb)]))[0])
                    if j < 0:
                        continue
                    sx, sy, sz = (slice(0, BLOCK) if d == 0 else slice(0, 1) for d in (dx, dy, dz))
                    tx, ty, tz = (slice(0, BLOCK) if d == 0 else slice(BLOCK, n) for d in (dx, dy, dz))
                    out_t[tx, ty, tz] = self.tsdf[j][sx, sy, sz]
                    out_w[tx, ty, tz] = self.weight[j][sx, sy, sz]
                    out_c[tx, ty, tz] = self.color[j][sx, sy, sz]
                    out_v[tx, ty, tz] = self.views[j][sx, sy, sz]
        return out_t, out_w, out_c, out_v


def band_keys(vol: BlockVolume, xyz: np.ndarray, camera: np.ndarray, trunc: float) -> np.ndarray:
    """Keys of the blocks that the truncation band around surface points ``xyz`` (N, 3) seen from
    ``camera`` (3,) passes through, inside the box: points along each ray every voxel, a voxel beyond the
    band either side (the band is fused in z-depth, a little longer along an oblique ray)."""
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    ray = xyz - camera
    ray /= np.maximum(np.linalg.norm(ray, axis=1, keepdims=True), 1e-12)
    keys = []
    step = max(vol.voxel, 1e-12)
    for offset in np.arange(-trunc - step, trunc + step + 1e-9, step):
        cell = np.floor((xyz + offset * ray - vol.lo) / vol.voxel).astype(np.int64)
        ok = np.all((cell >= 0) & (cell < vol.dims), axis=1)
        keys.append(np.unique(vol.key(cell[ok] // BLOCK)))
    return np.unique(np.concatenate(keys))


# ----------------------------------------------------------------------------- the export


def require_mesh_libraries() -> None:
    """One UserError naming the extra to install when scikit-image or trimesh is missing."""
    import importlib.util

    missing = [name for name, module in (("scikit-image", "skimage"), ("trimesh", "trimesh"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"meshes need {' and '.join(missing)}, which are not installed",
                        hint="pip install 'mip360cli[mesh]' (scikit-image's marching cubes, trimesh's file formats)")


def export_mesh(loaded: LoadedRun, out: Path, opts: MeshOptions | None = None) -> MeshSummary:
    """Render the views of ``opts.split``, fuse their depth into a TSDF, extract, clean and write ``out``."""
    opts = opts or MeshOptions()
    opts.check()
    require_mesh_libraries()
    import trimesh

    views = export_views(loaded, opts.split, opts.ratio)
    if len(views) < opts.min_views:
        raise UserError(f"the {opts.split} split has {len(views)} view(s) and --min-views is {opts.min_views}",
                        hint="use --split all, or a lower --min-views")
    check_mesh_output(out)
    with locked_scratch(out) as scratch:
        render_depth_maps(loaded, views, scratch)
        vol, dropped = _fuse(loaded, views, scratch, opts)
        vertices, faces, colors, culled = extract(vol, opts.min_views)
        mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=False)
        mesh.merge_vertices()  # the vertices blocks share on their faces
        n_components = 0
        if len(mesh.faces):
            mesh, n_components = keep_largest(mesh, opts.components)
        if len(mesh.faces) == 0:
            raise UserError("the mesh is empty: no surface was seen by enough views",
                            hint="lower --min-views or --min-opacity, raise --tolerance, or check that the run "
                                 "is trained (mip360 eval)")
        if not opts.normalized:  # back to the input world: p = T^-1 [p_n, 1]
            inv = np.linalg.inv(loaded.transform)
            mesh.apply_transform(inv)  # trimesh flips the faces of a mirroring transform
        write_mesh(out, mesh, opts.format, opts.normalized)
    frame = "the normalized scene" if opts.normalized else "the input world: the dataset's own coordinates and units"
    info(f"mesh: {len(mesh.vertices):,} vertices, {len(mesh.faces):,} faces from {len(views)} views "
         f"({len(vol.keys):,} blocks of {BLOCK}^3 voxels of {vol.voxel:.4g}); dropped as floaters: "
         f"{dropped:,} pixels whose depth neighbouring views do not confirm, {culled:,} faces seen by fewer "
         f"than {opts.min_views} views -> {out}")
    return MeshSummary(out, len(mesh.vertices), len(mesh.faces), len(views), len(vol.keys), vol.voxel, culled,
                       dropped, n_components, frame)


def _fuse(loaded: LoadedRun, views: list[View], scratch: Scratch, opts: MeshOptions) -> tuple[BlockVolume, int]:
    """The volume of the views' confirmed surface: pass 1 finds the box and the pixels to fuse, pass 2 the
    blocks, pass 3 fuses. Returns the volume and the number of opaque pixels dropped as unconfirmed."""
    check = PointOptions(min_opacity=opts.min_opacity, tolerance=opts.tolerance, neighbours=opts.neighbours,
                         min_agree=opts.min_views - 1, bound=opts.bound)
    lo, hi, dropped = np.full(3, np.inf), np.full(3, -np.inf), 0
    with progress_bar("checking depth", len(views), "views") as bar:
        for i, view, d, xyz, idx, opaque in confirmed_pixels(views, scratch, loaded.cfg.data.far, check):
            dropped += opaque - len(idx)
            valid = np.zeros(d["depth"].size, bool)
            valid[idx] = True
            scratch.save(i, **{k: d[k] for k in d.files}, valid=valid.reshape(d["depth"].shape))
            if len(idx):
                pts = xyz.reshape(-1, 3)[idx]
                lo, hi = np.minimum(lo, pts.min(0)), np.maximum(hi, pts.max(0))
            bar.advance(1)
    if not np.all(np.isfinite(lo)):
        raise UserError("no pixel passed the filters: nothing to fuse",
                        hint="lower --min-opacity or --min-views, raise --tolerance, or check that the run is "
                             "trained (mip360 eval)")
    voxel = float((hi - lo).max()) / opts.resolution
    voxel = voxel if voxel > 0 else 1e-3
    trunc = opts.truncation * voxel
    lo = lo - trunc - voxel
    dims = np.ceil((hi + trunc + voxel - lo) / voxel).astype(np.int64)
    probe = BlockVolume(lo, voxel, dims, np.zeros(0, np.int64))
    per_view, union = [], np.zeros(0, np.int64)
    with progress_bar("allocating blocks", len(views), "views") as bar:
        for i, view in enumerate(views):
            d = scratch.load(i)
            xyz = unproject(d["depth"], view.K, view.c2w)[d["valid"]]
            per_view.append(band_keys(probe, xyz, view.c2w[:, 3], trunc))  # kept: the fusion pass needs them
            union = np.union1d(union, per_view[-1])
            bar.advance(1)
    vol = BlockVolume(lo, voxel, dims, union)
    with progress_bar("fusing depth", len(views), "views") as bar:
        for i, view in enumerate(views):
            d = scratch.load(i)
            vol.integrate(vol.find(per_view[i]), view, d["depth"], d["rgb"], d["valid"], trunc)
            bar.advance(1)
    return vol, dropped


def extract(vol: BlockVolume, min_views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Marching cubes (scikit-image) block by block, over the cubes whose 8 voxels were all observed.

    Returns vertices (V, 3) in the volume's world, faces (F, 3) int64 (outward: from the inside, negative,
    towards the observed free space), vertex colours (V, 4) uint8, and the number of faces culled because
    fewer than ``min_views`` views saw the surface there.
    """
    from skimage.measure import marching_cubes

    all_v, all_f, all_c, offset, culled = [], [], [], 0, 0
    with progress_bar("extracting surface", len(vol.keys), "blocks") as bar:
        for i in range(len(vol.keys)):
            t, w, c, seen = vol.padded(i)
            observed = w > 0
            if not (np.any(t[observed] < 0) and np.any(t[observed] > 0)):
                bar.advance(1)
                continue
            verts, faces, _, _ = marching_cubes(t, 0.0)
            # a cube is kept when all 8 of its voxels were observed (an unobserved voxel reads +1)
            corner = np.floor(verts[faces].mean(1)).astype(np.int64).clip(0, BLOCK - 1)
            cube_ok = np.ones((BLOCK, BLOCK, BLOCK), bool)
            cube_views = np.full((BLOCK, BLOCK, BLOCK), np.iinfo(np.int64).max)
            for dx in (0, 1):
                for dy in (0, 1):
                    for dz in (0, 1):
                        sl = (slice(dx, dx + BLOCK), slice(dy, dy + BLOCK), slice(dz, dz + BLOCK))
                        cube_ok &= observed[sl]
                        cube_views = np.minimum(cube_views, seen[sl])
            ok = cube_ok[tuple(corner.T)]
            enough = cube_views[tuple(corner.T)] >= min_views
            culled += int(np.count_nonzero(ok & ~enough))
            faces = faces[ok & enough]
            if len(faces):
                used, faces = np.unique(faces, return_inverse=True)
                verts = verts[used]
                all_c.append(_trilinear(c, verts))
                base = vol.block_of_key(vol.keys[i]) * BLOCK
                all_v.append(vol.lo + (base + verts + 0.5) * vol.voxel)
                all_f.append(faces.reshape(-1, 3) + offset)
                offset += len(verts)
            bar.advance(1)
    if not all_v:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros((0, 4), np.uint8), culled
    colors = np.clip(np.round(np.concatenate(all_c) * 255), 0, 255).astype(np.uint8)
    colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
    return np.concatenate(all_v), np.concatenate(all_f), colors, culled


def _trilinear(grid: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(X, Y, Z, C) values at continuous voxel coordinates ``p`` (N, 3) (voxel i at coordinate i)."""
    hi = np.array(grid.shape[:3]) - 1
    f = np.floor(p).astype(np.int64).clip(0, hi - 1)
    r = p - f
    out = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                wgt = ((r[:, 0] if dx else 1 - r[:, 0]) * (r[:, 1] if dy else 1 - r[:, 1])
                       * (r[:, 2] if dz else 1 - r[:, 2]))
                out = out + wgt[:, None] * grid[f[:, 0] + dx, f[:, 1] + dy, f[:, 2] + dz]
    return out


def keep_largest(mesh, n: int):
    """The ``n`` largest connected pieces of ``mesh`` (by face count; 0: all) and how many pieces it had."""
    import trimesh

    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    sizes = np.bincount(labels)
    if n == 0 or n >= len(sizes):
        return mesh, len(sizes)
    keep = np.argsort(-sizes, kind="stable")[:n]
    mesh.update_faces(np.isin(labels, keep))
    mesh.remove_unreferenced_vertices()
    return mesh, len(sizes)


# ----------------------------------------------------------------------------- files


def write_mesh(path: Path, mesh, fmt: str, normalized: bool = False) -> None:
    """Write ``mesh`` (a trimesh.Trimesh with vertex colours) as ``fmt``, atomically, marked as mip360's and
    with its frame (the input world, or the ``normalized`` scene)."""
    frame = "normalized" if normalized else "input"
    if fmt == "ply":
        data = ply_bytes(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32),
                         np.asarray(mesh.visual.vertex_colors)[:, :3], normalized)
    elif fmt == "obj":
        from trimesh.exchange.obj import export_obj

        data = export_obj(mesh, include_normals=False, include_texture=False,
                          header=f"{MARKER}\n# mip360 frame {frame}").encode()
    else:
        from trimesh.exchange.gltf import export_glb

        def mark(tree):
            tree.setdefault("asset", {})["generator"] = MARKER
            tree["asset"]["extras"] = {"mip360_frame": frame}

        data = export_glb(mesh.scene(), tree_postprocessor=mark)
    with atomic_path(path, disk_full_hint="free some space, or write the mesh elsewhere with --out") as tmp:
        tmp.write_bytes(data)


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, normalized: bool = False) -> bytes:
    """A binary little-endian PLY: (V, 3) float32 vertices with (V, 3) uint8 colours, (F, 3) int32 faces."""
    vert = np.empty(len(vertices), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                    ("blue", "u1")])
    for i, k in enumerate("xyz"):
        vert[k] = vertices[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        vert[k] = colors[:, i]
    face = np.empty(len(faces), [("n", "u1"), ("v", "<i4", (3,))])
    face["n"], face["v"] = 3, faces
    header = (f"ply\nformat binary_little_endian 1.0\n{PLY_COMMENT}\n{frame_comment(normalized)}\n"
              f"element vertex {len(vertices)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    return header.encode("ascii") + vert.tobytes() + face.tobytes()


def _glb_json(f) -> dict | None:
    """The JSON chunk of an open GLB file (positioned anywhere), or None when it is not one."""
    f.seek(0)
    if f.read(4) != b"glTF":
        return None
    f.seek(12)
    length, kind = struct.unpack("<II", f.read(8))
    if kind != 0x4E4F534A or length > 1 << 26:  # "JSON", at most 64 MiB
        return None
    tree = json.loads(f.read(length))
    return tree if isinstance(tree, dict) else None


def file_frame(path: Path) -> str:
    """``normalized`` or ``input``: the frame of a mesh or point cloud mip360 wrote (by its marker); a file of
    another tool is taken to be in the input world (the dataset's, where COLMAP and the others write)."""
    try:
        with open(path, "rb") as f:
            tree = _glb_json(f)
            if tree is not None:
                extras = tree.get("asset", {}).get("extras", {})
                return "normalized" if isinstance(extras, dict) and extras.get("mip360_frame") == "normalized" \
                    else "input"
            f.seek(0)
            head = f.read(1024)
    except (OSError, ValueError, struct.error, AttributeError):
        return "input"
    return "normalized" if b"mip360 frame normalized" in head else "input"


def read_geometry(path: Path, transform: np.ndarray) -> dict:
    """A mesh or point cloud file (PLY, GLB, OBJ: what trimesh reads) in a run's normalized scene, for the viewer.

    Args:
        transform: (4, 4) the run's input -> normalized transform (applied unless the file is mip360's
            ``--normalized`` export).
    Returns:
        ``{"vertices": (V, 3) float32, "colors": (V, 3) uint8, "faces": (F, 3) int32 or None for points}``.
    """
    require_mesh_libraries()
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--show {path}: no such file", hint="give a mesh or point cloud made by `mip360 export`")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as e:  # trimesh raises many kinds for a damaged or foreign file
        raise UserError(f"--show {path}: cannot read it as a mesh or point cloud ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})", hint="give a PLY, GLB or OBJ file") from None
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.to_geometry() if hasattr(loaded, "to_geometry") else loaded.dump(concatenate=True)
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), np.float64)
    if len(vertices) == 0 or not np.all(np.isfinite(vertices)):
        raise UserError(f"--show {path}: it holds no vertices, or non-finite ones")
    faces = getattr(loaded, "faces", None)
    if getattr(loaded, "colors", None) is not None and len(loaded.colors):  # a point cloud
        colors = np.asarray(loaded.colors)[:, :3]
    elif hasattr(loaded, "visual") and getattr(loaded.visual, "kind", None) == "vertex":
        colors = np.asarray(loaded.visual.vertex_colors)[:, :3]
    else:
        colors = np.full((len(vertices), 3), 200, np.uint8)
    if file_frame(path) == "input":
        vertices = vertices @ transform[:3, :3].T + transform[:3, 3]
    return {"vertices": vertices.astype(np.float32), "colors": colors.astype(np.uint8),
            "faces": None if faces is None or len(faces) == 0 else np.asarray(faces, np.int32)}


def is_our_mesh(path: Path) -> bool:
    """Whether ``path`` is a mesh mip360 wrote (its marker in the PLY or OBJ header or the GLB's asset)."""
    try:
        with open(path, "rb") as f:
            tree = _glb_json(f)
            if tree is not None:
                return tree.get("asset", {}).get("generator") == MARKER
            f.seek(0)
            text = f.read(512)
    except (OSError, ValueError, struct.error, AttributeError):
        return False
    return PLY_COMMENT.encode() in text or text.startswith(b"# " + MARKER.encode())


def check_mesh_output(out: Path) -> None:
    """The mesh ``out`` may be written: not a folder, and not a file that mip360 did not write."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder", hint=f"give the mesh file to write, e.g. {out / 'mesh.ply'}")
    if out.exists() and not is_our_mesh(out):
        refuse_foreign(out.parent, [out.name], "mip360 overwrites only a mesh it wrote",
                       hint="choose another --out, or move that file away")
