"""Progress and messages: a rich bar on a terminal, plain lines elsewhere (CI, files)."""

from __future__ import annotations

import re

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.markup import escape
from rich.text import Text

console = Console(stderr=True, highlight=False)


def info(message: str) -> None:
    """A status line for the user (stderr, so stdout stays clean for data)."""
    console.print(message, soft_wrap=True)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def format_duration(seconds: float, estimate: bool = False) -> str:
    """``42 s``, ``12.5 min``, ``9.10 h``; an ``estimate`` with a digit less (``12 min``, ``9.1 h``).

    Example:
        >>> format_duration(30), format_duration(750), format_duration(32760), format_duration(7906, estimate=True)
        ('30 s', '12.5 min', '9.10 h', '2.2 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.{0 if estimate else 1}f} min"
    return f"{seconds / 3600:.{1 if estimate else 2}f} h"


def parse_duration(text: str | float | int) -> float:
    """``2h``, ``90m``, ``1h30m``, ``45s``, ``1.5h`` or a number of seconds -> seconds; ValueError otherwise.

    Example:
        >>> parse_duration("2h"), parse_duration("1h30m"), parse_duration("90 min"), parse_duration(60)
        (7200.0, 5400.0, 5400.0, 60.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    try:
        return float(s)
    except ValueError:
        pass
    units = {"h": 3600.0, "hr": 3600.0, "hours": 3600.0, "hour": 3600.0, "m": 60.0, "min": 60.0,
             "minutes": 60.0, "s": 1.0, "sec": 1.0, "seconds": 1.0, "d": 86400.0, "days": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", s)
    if not parts or "".join(n + u for n, u in parts) != s or any(u not in units for _, u in parts):
        raise ValueError(f"not a duration: {text!r} (write e.g. 2h, 90m, 1h30m or 3600)")
    return float(sum(float(n) * units[u] for n, u in parts))


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


class _Plain:
    """Progress as occasional plain lines: at most every ``interval`` seconds, and at the end."""

    def __init__(self, description: str, total: int, unit: str, interval: float = 5.0):
        self.description, self.total, self.unit, self.interval = description, total, unit, interval
        self.done = self.start_done = 0
        self.status = ""
        self.start = self.last = time.perf_counter()

    def set_total(self, total: int) -> None:
        self.total = total

    def advance(self, n: int = 1, status: str | None = None) -> None:
        """``status``: new text after the figures; None keeps the last one."""
        self.done += n
        if status is not None:
            self.status = status
        status = self.status
        now = time.perf_counter()
        if now - self.last >= self.interval or self.done >= self.total:
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            console.print(f"{self.description}: {self.done}/{self.total} {self.unit} "
                          f"({rate:,.1f} {self.unit}/s, ETA {eta:,.0f} s){'  ' + status if status else ''}",
                          soft_wrap=True, markup=False)


class _Bar:
    def __init__(self, progress: Progress, task_id):
        self.progress, self.task_id = progress, task_id

    def set_total(self, total: int) -> None:
        self.progress.update(self.task_id, total=total)

    def advance(self, n: int = 1, status: str | None = None) -> None:
        """``status``: new text after the figures; None keeps the last one."""
        if status is None:
            self.progress.update(self.task_id, advance=n)
        else:
            self.progress.update(self.task_id, advance=n, status=status)


class _Quiet:
    def advance(self, n: int = 1, status: str | None = None) -> None:
        pass

    def set_total(self, total: int) -> None:
        pass


@contextmanager
def progress_bar(description: str, total: int, unit: str = "it", completed: int = 0,
                 interval: float = 5.0, quiet: bool = False) -> Iterator[_Bar | _Plain | _Quiet]:
    """Yield an object with ``advance(n, status="")``; shows rate (``unit``/s), ETA and the status text.

    On a terminal: a rich bar. Elsewhere: a plain line at most every ``interval`` seconds. ``quiet``:
    nothing (work too short to show).
    """
    if quiet:
        yield _Quiet()
        return
    if not console.is_terminal:
        plain = _Plain(description, total, unit, interval)
        plain.done = plain.start_done = completed
        yield plain
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, unit=unit, completed=completed,
                                               status=""))
