"""LPIPS as the field's tables compute it: the ``lpips`` package (version 0.1 linear layers) on a
torchvision backbone (AlexNet, as the papers; VGG as an option), inputs in [-1, 1], spatial mean.

The linear layers ship inside the ``lpips`` package; the backbone's ImageNet weights are downloaded
by torchvision on first use into ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``). Where
the package or the weights are missing, ``eval.lpips: auto`` says so once and scores the rest;
``eval.lpips: true`` makes it an error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.progress import warn

WEIGHTS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
"""The torchvision files of the backbones (what torchvision downloads)."""
NAMES = {"alex": "AlexNet", "vgg": "VGG-16"}
MIN_SIDE = {"alex": 31, "vgg": 16}
"""The smallest image side the backbone's layers that LPIPS reads can take."""


def weights_dir() -> Path:
    """Where torchvision keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class Lpips:
    """LPIPS distance of two images; lower is closer, 0 for identical images.

    Args:
        net: ``alex`` or ``vgg``; device: where the network runs.
    """

    def __init__(self, net: str, device: torch.device):
        import lpips

        self.net, self.device = net, device
        try:
            self.version = importlib.metadata.version("lpips")
        except importlib.metadata.PackageNotFoundError:
            self.version = "?"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # torchvision's notice about its 'pretrained' argument
            self.model = lpips.LPIPS(net=net, version="0.1", verbose=False).to(device).eval()

    def describe(self) -> str:
        return (f"LPIPS v0.1 ({NAMES[self.net]} backbone from torchvision, linear layers of lpips {self.version}), "
                "inputs scaled to [-1, 1], spatial mean")

    def __call__(self, img: np.ndarray, gt: np.ndarray) -> float:
        """Images (H, W, 3) in [0, 1]."""
        t = lambda a: torch.as_tensor(np.asarray(a, np.float32)).permute(2, 0, 1)[None].to(self.device) * 2 - 1  # noqa: E731
        with torch.inference_mode():
            return float(self.model(t(img), t(gt)).reshape(()))


def load_lpips(setting: str | bool, net: str, device: torch.device, side: int | None = None
               ) -> tuple[Lpips | None, str]:
    """The LPIPS scorer ``eval.lpips`` asks for, and a line for the record: how it scores, or why not.

    ``auto`` without the package or the weights (and no network to fetch them), or with images whose
    smallest ``side`` is below what the backbone takes: one warning, None. ``true``: a UserError
    saying what is missing and where to put it.
    """
    if setting is False:
        return None, "not scored (eval.lpips=false)"
    if side is not None and side < MIN_SIDE[net]:
        return _missing(setting, f"not scored: the images' smallest side is {side} pixels, and {NAMES[net]} "
                                 f"needs {MIN_SIDE[net]} (evaluate at a larger --ratio)")
    try:
        import lpips  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        missing = "the lpips package is" if e.name == "lpips" else f"{e.name}, which the lpips package needs, is"
        return _missing(setting, f'not scored: {missing} not installed (pip install "mip360cli[lpips]", with the '
                                 "torchvision that matches your torch)")
    try:
        with _quick_network():
            scorer = Lpips(net, device)
    except Exception as e:  # noqa: BLE001 - a download that failed, or a damaged file: say which
        file = weights_dir() / WEIGHTS[net]
        why = (f"not scored: the {NAMES[net]} weights could not be loaded ({type(e).__name__}: "
               f"{str(e).splitlines()[0][:200] if str(e) else ''}); torchvision downloads {WEIGHTS[net]} on first use: "
               f"put that file in {file.parent} (or set TORCH_HOME)")
        return _missing(setting, why)
    return scorer, scorer.describe()


def _missing(setting, why: str) -> tuple[None, str]:
    if setting is True:
        raise UserError(f"LPIPS {why.removeprefix('not scored: ')}", hint="or set eval.lpips=auto to score without it")
    warn(f"LPIPS {why}")
    return None, why


@contextlib.contextmanager
def _quick_network(seconds: float = 20.0):
    """A download that cannot connect gives up within ``seconds`` instead of waiting for the OS."""
    import socket

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)

