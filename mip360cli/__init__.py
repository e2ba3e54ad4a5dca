"""mip360: Mip-NeRF 360 in PyTorch as a command-line toolkit."""

from .core.version import __version__

__all__ = ["__version__"]
