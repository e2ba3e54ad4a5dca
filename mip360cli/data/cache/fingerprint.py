"""What a cache was built from: its options and the content of its inputs, the fingerprint of both,
whether an existing cache is stale (and why), and the options a later command takes from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ...config import CacheConfig, DataConfig
from ...core.files import is_regular_file
from ...core.progress import info
from ..scene import Scene
from .format import CACHE_VERSION, LAYOUT_VERSION, READABLE_VERSIONS

# The options that change what a cache holds, and the config keys they come from (speed knobs such as
# workers or memory_mb are not among them).
OPTION_KEYS = {
    "format": "data.format", "ratio": "data.ratio", "frame_interval": "data.frame_interval",
    "test_every": "data.test_every", "easymocap_frame": "data.easymocap_frame", "alpha": "data.alpha",
    "alpha_background": "data.alpha_background", "bucket_rays": "cache.bucket_rays", "seed": "cache.seed",
    "compression": "cache.compression", "masks": "data.masks",
}


def option_fields(data: DataConfig, cache: CacheConfig) -> Iterator[tuple[str, str, object, str]]:
    """(option name, dotted key, config section object, field name) of every cache option."""
    sections = {"data": data, "cache": cache}
    for name, key in OPTION_KEYS.items():
        section, field = key.split(".")
        yield name, key, sections[section], field


def cache_options(data: DataConfig, cache: CacheConfig, fmt: str, n_masks: int = 0) -> dict:
    """The options that change what the cache holds (``fmt``: the format actually read; ``n_masks``: images
    with a mask). ``masks`` is left out while it is ``auto`` and no image has a mask: a dataset without masks
    keeps the fingerprint of the versions before them."""
    options = {"version": LAYOUT_VERSION}
    options.update({name: getattr(obj, field) for name, _, obj, field in option_fields(data, cache)})
    options["format"] = fmt
    if options["masks"] == "auto" and not n_masks:
        del options["masks"]
    return options


def adopt_cache_options(path: Path, data: DataConfig, cache: CacheConfig, explicit: set[str]
                        ) -> tuple[DataConfig, CacheConfig, list[str]]:
    """Take the options of the cache at ``path`` for every key the user did not give explicitly.

    What ``mip360 preprocess`` built is what later commands use: a ratio or split
    given once to preprocess is not undone by a config that does not mention it.

    Args:
        explicit: dotted keys given on the command line (``data.ratio``); these win.
    Returns:
        the data and cache sections with the cache's options, and ``key value`` lines of
        what was taken (empty when there is no readable cache or nothing differed).
    """
    found = stored_info(path)
    if found is None:
        return data, cache, []
    stored = found["options"]
    data, cache = dataclasses.replace(data), dataclasses.replace(cache)
    adopted = []
    for name, key, obj, field in option_fields(data, cache):
        if key in explicit or name not in stored:
            continue
        value, current = stored[name], getattr(obj, field)
        if current != value:
            setattr(obj, field, value)
            if not (name == "format" and current == "auto"):  # auto would find it too, unless there are two
                adopted.append(f"{key}={value}")
    return data, cache, adopted


def stored_info(path: Path) -> dict | None:
    """``options`` (dict), ``n_rays`` and ``n_buckets`` of a complete cache at ``path``; None when there is
    none or it cannot be read."""
    if not is_regular_file(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False) or "options" not in f.attrs:
                return None
            options = json.loads(f.attrs["options"])
            return {"options": options, "n_rays": int(f.attrs["n_rays"]),
                    "n_buckets": int(f.attrs["n_buckets"])} if isinstance(options, dict) else None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def file_hash(path: Path | None = None, data: bytes | np.ndarray | None = None) -> str:
    """Content hash of a file (or of its bytes, already read)."""
    h = hashlib.blake2b(digest_size=16)
    if data is not None:
        h.update(memoryview(data))
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def input_files(scene: Scene, root: Path) -> list[tuple[str, Path]]:
    """(name, path) of every camera file and selected image; names relative to ``root`` when inside it."""
    out = []
    for p in (*scene.camera_files, *scene.cameras.image_paths, *(m for m in scene.masks if m is not None)):
        try:
            name = str(Path(p).resolve().relative_to(root.resolve()))
        except ValueError:
            name = str(Path(p).resolve())
        out.append((name, Path(p)))
    return out


def fingerprint(options: dict, records: list[list]) -> str:
    """A hash of the options and the inputs' names and contents (not their times: a copy keeps it)."""
    blob = json.dumps({"options": options, "inputs": [[r[0], r[3]] for r in records]}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def current_records(inputs: list[tuple[str, Path]], stored: list[list]) -> tuple[list[list], int]:
    """[name, size, mtime_ns, content hash] of the inputs now, hashing only where it can matter.

    A file whose size and modification time match the stored record keeps the
    stored hash; one whose size matches but time differs (``touch``, ``cp``, rsync
    without times) is hashed again; one whose size differs has changed (hash None).
    Returns (records, number of files hashed).
    """
    old = {r[0]: r for r in stored if len(r) >= 4}
    records, hashed = [], 0
    for name, p in inputs:
        st = os.stat(p)
        prev = old.get(name)
        digest = None
        if prev is not None and prev[1] == st.st_size:
            if prev[2] == st.st_mtime_ns:
                digest = prev[3]
            else:
                digest, hashed = file_hash(p), hashed + 1
        records.append([name, st.st_size, st.st_mtime_ns, digest])
    return records, hashed


def describe_changes(old_options: dict, old_records: list, options: dict, records: list,
                     explicit: set[str] = frozenset()) -> list[str]:
    """Human-readable reasons why a cache no longer matches its inputs."""
    reasons = []
    for k in sorted(set(options) | set(old_options)):
        if old_options.get(k) != options.get(k):
            given = " (given on the command line)" if OPTION_KEYS.get(k) in explicit else ""
            reasons.append(f"option {k}: {old_options.get(k)!r} -> {options.get(k)!r}{given}")
    old = {r[0]: r[3] if len(r) >= 4 else None for r in old_records}
    new = {r[0]: r[3] for r in records}
    for label, names in (("added", sorted(set(new) - set(old))), ("removed", sorted(set(old) - set(new))),
                         ("modified", sorted(k for k in set(new) & set(old) if new[k] is None or new[k] != old[k]))):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            reasons.append(f"{len(names)} input file(s) {label}: {shown}")
    return reasons


def is_mip360_cache(path: Path) -> bool:
    """Whether the file at ``path`` is an HDF5 file that mip360 wrote as a ray cache (any version, even a
    damaged one): the only kind of file a rebuild may replace."""
    if not is_regular_file(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return "mip360_version" in f.attrs or f.attrs.get("version") in READABLE_VERSIONS
    except (OSError, ValueError, TypeError):
        return False


def check_cache(path: Path, options: dict, inputs: list[tuple[str, Path]], explicit: set[str] = frozenset()
                ) -> tuple[list[str] | None, list[list]]:
    """Is ``path`` an up-to-date cache for these options and inputs?

    Returns (None if it is, else the reasons it is not; the inputs' current records).
    """
    if not path.exists():
        return ["no cache yet"], current_records(inputs, [])[0]
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("version")
            if version != CACHE_VERSION:
                return ([f"cache format version {version} (this mip360 writes {CACHE_VERSION}, with checksums of "
                         "its rays and content hashes of its inputs)"], current_records(inputs, [])[0])
            old_options, stored = json.loads(f.attrs["options"]), json.loads(f.attrs["inputs"])
            stored_fingerprint, complete = f.attrs.get("fingerprint"), bool(f.attrs.get("complete", False))
        if not isinstance(old_options, dict) or not isinstance(stored, list) or not all(
                isinstance(r, list) and r and isinstance(r[0], str) for r in stored):
            raise ValueError("its options or input records are damaged")
    except (OSError, KeyError, ValueError, TypeError, RecursionError) as e:
        return [f"existing file is not a readable cache ({e})"], current_records(inputs, [])[0]
    records, hashed = current_records(inputs, stored)
    if complete and all(r[3] is not None for r in records) and fingerprint(options, records) == stored_fingerprint:
        if hashed:
            info(f"{hashed} input file(s) have new modification times but the same content (checked by hash): "
                 f"{path.name} is kept")
        return None, records
    return describe_changes(old_options, stored, options, records, explicit) or ["inputs changed"], records
