"""Files: atomic writes (a temp file beside the target, renamed when complete), locks, bounded reads of
untrusted files, and telling the files mip360 wrote from the user's."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat as stat_mod
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import (single-threaded): os.umask can only be read by setting it.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".partial",
                disk_full_hint: str = "free some space and run the same command again: finished work is kept"
                ) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it
    was, so an interrupted write never leaves a file that looks complete. The
    file gets the permissions of any file the user creates (the umask), not the
    private 0600 of a temporary file. A full disk becomes one clear UserError
    naming the file.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    if path.is_dir():
        raise UserError(f"{path} is a folder: mip360 does not write a file in its place", hint="give another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise UserError(f"the disk is full: {path} was not written (nothing half-written was left)",
                            hint=disk_full_hint) from e
        raise UserError(f"cannot write into {path.parent}: {e.strerror or e}",
                        hint="choose another output path (--out)") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if not isinstance(e, UserError) and is_disk_full(e):
            raise UserError(f"the disk is full: {path} was not written (nothing half-written was left)",
                            hint=disk_full_hint) from e
        raise


def leftover_temp_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files :func:`atomic_path` left beside ``path`` when a process was killed mid-write."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if temp_target(p.name) == path.name)


@contextlib.contextmanager
def process_lock(lock_file: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block; the OS releases it if the process dies.

    A second mip360 process on the same ``what`` (a run folder, a cache) gets a
    UserError naming the holder (pid, host, command, since when) instead of
    mixing its files with the first one's.
    """
    import fcntl
    import json
    import socket
    import sys
    import time

    lock_file = Path(lock_file)
    ensure_writable_dir(lock_file.parent)
    if lock_file.exists() or lock_file.is_symlink():
        check_regular_file(lock_file, "lock file")  # a folder, FIFO or device there is not mip360's lock
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~_UMASK)
    except OSError as e:
        raise UserError(f"cannot open the lock file {lock_file}: {e.strerror}",
                        hint="choose another output path, or fix the folder's permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, UnicodeDecodeError):
                holder = {}
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                   f"{holder.get('since', '?')}: {holder.get('command', '?')}")
            raise UserError(f"another mip360 process is using {what} ({who})",
                            hint="wait for it to finish or stop it, or use another folder") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(["mip360", *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


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


# ----------------------------------------------------------------------------- bounded reads

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` (followed through links) is a regular file: safe to open and read."""
    try:
        return stat_mod.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_regular_file(path: str | os.PathLike, what: str, limit: int | None = None) -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file of at most ``limit`` bytes.

    Directories, devices (``/dev/zero``), FIFOs and sockets are refused before they are opened (opening a
    FIFO would wait forever, reading a device would never end), with one message naming ``what``.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if stat_mod.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is a folder, not a file")
    if not stat_mod.S_ISREG(st.st_mode):
        link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
        raise UserError(f"{what} {path}{link} is not a regular file (a device, a pipe or a socket)",
                        hint="give the file itself; mip360 reads only regular files")
    if limit is not None and st.st_size > limit:
        raise UserError(f"{what} {path} is {format_bytes(st.st_size)}, more than any real one (at most "
                        f"{format_bytes(limit)})", hint="check that the path names the right file")
    return st


def read_bytes_bounded(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before and while reading)."""
    path = Path(path)
    check_regular_file(path, what, limit)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > limit:  # it grew since the stat
        raise UserError(f"{what} {path} is more than {format_bytes(limit)}",
                        hint="check that the path names the right file")
    return data


def read_text_bounded(path: str | os.PathLike, what: str, limit: int) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes; a decoding error names the line."""
    data = read_bytes_bounded(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: {what} is not valid UTF-8 text") from None


def read_json_bounded(path: str | os.PathLike, what: str, limit: int = 256 * MIB):
    """A JSON file of at most ``limit`` bytes, parsed; malformed or absurdly nested JSON is one message."""
    import json

    text = read_text_bounded(path, what, limit)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({what}): {e.msg}") from None
    except RecursionError:
        raise UserError(f"{path}: {what} is nested too deeply to be real JSON data") from None


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``300 bytes``."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:.0f} bytes"


# ----------------------------------------------------------------------------- what mip360 wrote

_TEMP = re.compile(r"\.(?P<target>.+?)\.[a-z0-9_]+\.partial(\..*)?")  # mkstemp's random part, then .partial


def temp_target(name: str) -> str | None:
    """The name of the file an :func:`atomic_path` temporary file ``name`` was to become, or None when
    ``name`` is not such a temporary file.

    Example:
        >>> temp_target(".00001.png.k1ll3dxx.partial"), temp_target(".rgb.mp4.a1b2c3d4.partial.mp4")
        ('00001.png', 'rgb.mp4')
        >>> temp_target(".c.h5.k1ll3d.partial.runs.partial")  # the cache's spill file
        'c.h5'
        >>> temp_target("notes.txt") is None
        True
    """
    m = _TEMP.fullmatch(name)
    return m.group("target") if m else None


def files_below(folder: Path, limit: int = 100_000) -> list[Path]:
    """The files (and links) under ``folder``, relative to it, sorted; at most ``limit`` of them."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        found += [(base / n).relative_to(folder) for n in filenames]
        found += [(base / d).relative_to(folder) for d in dirnames if (base / d).is_symlink()]
        if len(found) >= limit:
            break
    return sorted(found)[:limit]


def listing(items, shown: int = 3) -> str:
    """``a, b, c and 4 more``."""
    items = [str(i) for i in items]
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def refuse_foreign(folder: Path, foreign: list, what: str, hint: str) -> None:
    """One UserError naming the files in ``folder`` that mip360 did not write (when there are any)."""
    if foreign:
        raise UserError(f"{folder} holds {len(foreign)} file(s) mip360 did not write ({listing(foreign)}); "
                        f"{what}", hint=hint)
