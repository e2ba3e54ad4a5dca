"""How much memory there is for a stage, so that work that cannot fit is refused with its figure before
anything is allocated (instead of an out-of-memory kill without a word)."""

from __future__ import annotations

import os

import torch

from .errors import UserError
from .files import format_bytes


def available_bytes(device: torch.device) -> int:
    """Memory a stage may use on ``device``: free GPU memory, or the memory the system can give (Linux's
    MemAvailable; the physical memory elsewhere)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def require(need: float, device: torch.device, what: str, hint: str) -> None:
    """Refuse ``what`` when it needs more than the memory available on ``device``."""
    have = available_bytes(device)
    if need > have:
        where = "free on the GPU" if device.type == "cuda" else "available on this machine"
        raise UserError(f"{what} needs about {format_bytes(need)} of memory, more than the {format_bytes(have)} "
                        f"{where}", hint=hint)
