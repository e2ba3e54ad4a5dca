"""Checkpoints: atomic writes, keeping the last K, finding the latest, compatibility checks."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path, PurePath

import torch

from ..config import Config, config_to_dict
from ..core.errors import UserError
from ..core.files import GIB, atomic_path, check_regular_file, temp_target

PATTERN = re.compile(r"step_(\d+)\.pt$")


def checkpoint_dir(run: Path) -> Path:
    return run / "checkpoints"


def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first."""
    d = checkpoint_dir(run)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := PATTERN.search(p.name))]
    return sorted(found)


def remove_checkpoints(run: Path) -> int:
    """Delete the run's checkpoints (``--restart``); return how many there were."""
    found = list_checkpoints(run)
    for _, p in found:
        p.unlink(missing_ok=True)
    return len(found)


def remove_leftovers(run: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a killed process left; return them."""
    d = checkpoint_dir(run)
    found = sorted(p for p in d.iterdir() if PATTERN.search(temp_target(p.name) or "")) if d.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


PLAIN_SCALARS = (bool, int, float, str, type(None))


def check_plain(value, where: str = "state") -> None:
    """Raise TypeError naming the first object in ``value`` that is not a tensor or plain data.

    Plain data: None, bool, int, float, str, and lists, tuples and dicts (str or int keys) of
    plain data or tensors: what ``torch.load(weights_only=True)`` reads without running code.
    """
    if isinstance(value, torch.Tensor) or type(value) in PLAIN_SCALARS:
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    if type(value) is dict:
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not a str or int")
            check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a tensor or plain data")


def save_checkpoint(run: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``state`` as ``checkpoints/step_NNNNNNN.pt`` atomically; delete all but the last ``keep``.

    ``state`` must be tensors and plain data (:func:`check_plain`): what it holds can be read
    back without unpickling code.
    """
    check_plain(state)
    path = checkpoint_dir(run) / f"step_{step:07d}.pt"
    _write(path, state)
    for _, old in list_checkpoints(run)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _write(path: Path, state: dict) -> None:
    """``torch.save(state)`` to ``path`` atomically and durably.

    Serialized in memory first: torch.save's own writer turns a full disk into "unexpected pos",
    while a plain write raises ENOSPC, which atomic_path reports as one clear message.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())


class UntrustedCheckpoint(UserError):
    """A checkpoint whose pickle names code (classes or functions) besides tensors and plain data."""


CHECKPOINT_LIMIT = 64 * GIB  # the paper's model with Adam's moments is about 0.1 GiB


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint with ``weights_only=True``: tensors and plain data, never code; then check that it
    is a mip360 checkpoint (:func:`check_state`).

    A file that names anything else (a crafted file could run any code when unpickled) is
    refused with :class:`UntrustedCheckpoint`; ``mip360 checkpoint upgrade PATH --trust``
    converts one the user trusts.
    """
    if not Path(path).exists():
        raise UserError(f"checkpoint {path} does not exist")
    check_regular_file(path, "checkpoint", CHECKPOINT_LIMIT)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise UntrustedCheckpoint(
            f"checkpoint {path} holds objects other than tensors and plain values{what}: reading it could run "
            "code, so mip360 does not read it",
            hint=f"if you trust where it comes from (you or someone you trust wrote it), convert it once with "
                 f"`mip360 checkpoint upgrade {path} --trust`; otherwise delete it") from None
    except Exception as e:  # noqa: BLE001 - a damaged file is the user's to know about
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})",
                        hint="delete it to resume from the one before, or start over with --restart") from None
    check_state(state, path)
    return state


def check_state(state, path: Path, resumable: bool = False) -> None:
    """Raise a UserError naming the first field of ``state`` that a mip360 checkpoint cannot hold.

    Every checkpoint has ``model`` (names -> finite tensors) and ``step`` (an int >= 0); the fields
    training resumes from (``optimizer``, ``rng``, ``config``, ...) are checked when present, and
    required with ``resumable``.
    """
    def bad(what: str) -> UserError:
        return UserError(f"checkpoint {path} is damaged or not one mip360 wrote: {what}",
                         hint="delete it to use the one before, or start over with --restart")

    if not isinstance(state, dict):
        raise bad(f"it holds a {type(state).__name__}, not a dict of fields")
    model = state.get("model")
    if not isinstance(model, dict) or not model or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                           for k, v in model.items()):
        raise bad("'model' must map parameter names to tensors")
    for k, v in model.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise bad(f"the parameter {k} has NaN or inf values")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"'step' must be a whole number >= 0, got {step!r}")
    fields = {"optimizer": dict, "rng": dict, "config": dict, "cache_fingerprint": str, "nonfinite_total": int,
              "train_seconds": (int, float)}
    for key, kind in fields.items():
        if key in state and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
            raise bad(f"'{key}' must be of type {getattr(kind, '__name__', 'number')}, got "
                      f"{type(state[key]).__name__}")
        if resumable and key not in state and key not in ("nonfinite_total", "train_seconds"):
            raise bad(f"it has no '{key}' to resume training from")
    if not (0 <= state.get("train_seconds", 0) < float("inf")):
        raise bad(f"'train_seconds' must be a finite number >= 0, got {state['train_seconds']!r}")
    rng = state.get("rng", {}).get("torch") if isinstance(state.get("rng"), dict) else None
    if "rng" in state and not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
        raise bad("'rng' must hold the generator state as a 1-D uint8 tensor ('torch')")
    if "optimizer" in state and not (isinstance(state["optimizer"].get("state"), dict)
                                     and isinstance(state["optimizer"].get("param_groups"), list)):
        raise bad("'optimizer' must hold 'state' and 'param_groups'")


def to_plain(value, where: str = "state"):
    """``value`` with numpy arrays as tensors, numpy scalars as Python numbers, paths as strings, and
    OrderedDicts as dicts; TypeError for anything else that is not plain (:func:`check_plain`)."""
    import numpy as np

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    for plain in (int, float, str):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, (list, tuple)):
        out = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):  # OrderedDict included
        return {to_plain(k, where): to_plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(f"{where}: {type(value).__module__}.{type(value).__name__} has no plain equivalent")


def is_plain(path: Path) -> bool:
    """Whether ``torch.load(weights_only=True)`` reads the file (no upgrade needed)."""
    try:
        load_checkpoint(path)
        return True
    except UntrustedCheckpoint:
        return False


def upgrade_checkpoint(path: Path) -> bool:
    """Rewrite a checkpoint the user trusts as tensors and plain data (atomically, in place).

    This is the one place mip360 unpickles a file with ``weights_only=False``: only for
    ``mip360 checkpoint upgrade --trust``. Returns False when it was plain already.
    """
    if is_plain(path):
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    try:
        state = to_plain(state)
        check_plain(state)
    except TypeError as e:
        raise UserError(f"checkpoint {path} cannot be converted: {e}",
                        hint="it was not written by mip360, or by a version that stored other objects") from None
    check_state(state, path)  # converted, it must still be a checkpoint that renders: else nothing is written
    _write(path, state)
    return True


def upgrade_all(path: Path, trust: bool) -> list[tuple[Path, str]]:
    """``mip360 checkpoint upgrade``: convert a checkpoint file, or every checkpoint of a run folder.

    Returns (file, "already plain" | "converted") for each. Without ``trust`` nothing is unpickled:
    a file that needs converting is an error.
    """
    if path.is_dir():
        files = [p for _, p in list_checkpoints(path)]
        if not files:
            raise UserError(f"{path} has no checkpoints (checkpoints/step_NNNNNNN.pt)")
    elif path.exists():
        files = [path]
    else:
        raise UserError(f"{path} does not exist", hint="give a checkpoint file or a run folder")
    todo = [f for f in files if not is_plain(f)]  # reading with weights_only=True runs nothing
    if todo and not trust:
        raise UserError(f"not converting {len(todo)} checkpoint(s) of {path}: converting unpickles them, which "
                        "runs any code they name", hint="add --trust if you trust where they come from "
                                                        "(you or someone you trust wrote them)")
    for f in todo:
        upgrade_checkpoint(f)
    return [(f, "converted" if f in todo else "already plain") for f in files]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys whose change makes a checkpoint meaningless for the new run.
BREAKING_PREFIXES = ("model.", "data.near", "data.far", "data.ratio", "data.frame_interval", "data.test_every",
                     "data.format", "train.seed", "train.batch_rays", "train.refine_cameras")


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(breaking, harmless) dotted keys that differ between two config dicts.

    A key the old config lacks (a checkpoint of an earlier version, before the option existed) counts as its
    default: a run trained before ``model.appearance.dim`` existed resumes as a run with it off.
    """
    defaults = flatten(config_to_dict(Config()))
    a, b = {**defaults, **flatten(old)}, flatten(new)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    breaking = [k for k in changed if k.startswith(BREAKING_PREFIXES)]
    return breaking, [k for k in changed if k not in breaking]
