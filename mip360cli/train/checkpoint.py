"""Checkpoints: atomic writes, keeping the last K, finding the latest, compatibility checks."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import torch

from ..errors import UserError
from ..fsutil import atomic_path

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


def remove_leftovers(run: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a killed process left; return them."""
    d = checkpoint_dir(run)
    found = sorted(d.glob(".step_*partial*")) if d.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def save_checkpoint(run: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``state`` as ``checkpoints/step_NNNNNNN.pt`` atomically; delete all but the last ``keep``."""
    path = checkpoint_dir(run) / f"step_{step:07d}.pt"
    # Serialized in memory first: torch.save's own writer turns a full disk into "unexpected pos", while a
    # plain write raises ENOSPC, which atomic_path reports as one clear message.
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    for _, old in list_checkpoints(run)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - a damaged file is the user's to know about
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})",
                        hint="delete it to resume from the one before, or start over with --restart") from None


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
                     "data.format", "train.seed", "train.batch_rays")


def config_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(breaking, harmless) dotted keys that differ between two config dicts."""
    a, b = flatten(old), flatten(new)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    breaking = [k for k in changed if k.startswith(BREAKING_PREFIXES)]
    return breaking, [k for k in changed if k not in breaking]
