"""mip360: Mip-NeRF 360 in PyTorch as a command-line toolkit, with a Python API (``mip360cli.open_run``)."""

from .core.version import __version__

__all__ = ["__version__", "open_run", "Run"]


def __getattr__(name: str):
    # The API is imported on first use: `import mip360cli` (and the command's start) stays light.
    if name in ("open_run", "Run"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mip360cli' has no attribute {name!r}")
