"""mip360: Mip-NeRF 360 in PyTorch as a command-line toolkit."""

__version__ = "0.1.0"
