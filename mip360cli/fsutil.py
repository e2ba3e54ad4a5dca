"""Atomic file writes: a temp file beside the target, renamed when complete."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it
    was, so an interrupted write never leaves a file that looks complete.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def ensure_writable_dir(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and check we can write into it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {directory}: {e.strerror}",
                        hint="choose another output path (--out)") from e
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"output folder {directory} is not writable",
                        hint="choose another output path (--out) or fix its permissions")
    return directory


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` (or its cause) says the disk or quota is full."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if "no space left" in text or "disk quota" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
