"""``RUN/metrics.jsonl``: one JSON object a line, ``{"step": N, ...figures}``, written as training goes.

A line is appended and flushed at every log (and validation); a resumed run first drops the lines
after its checkpoint's step, so the replayed steps are not logged twice. A line that is not a
complete record (a crash or a full disk in the middle of a write) is dropped with a warning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TextIO

from ..core.errors import UserError
from ..core.files import GIB, atomic_write_text, check_regular_file
from ..core.progress import warn

LIMIT = 4 * GIB  # a line a step of a million steps is about 300 MiB


def read_metrics(path: Path, warn_broken: bool = True) -> list[dict]:
    """The complete records of a metrics file, in order: each a dict with an int ``step`` >= 0 and
    numbers (or null) as values; other lines are dropped (with a warning)."""
    if not path.exists():
        return []
    check_regular_file(path, "metrics file", LIMIT)
    records, broken = [], 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                record = _record(line)
                if record is None:
                    broken += bool(line.strip())
                else:
                    records.append(record)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if broken and warn_broken:
        warn(f"{path}: dropped {broken} incomplete line(s) (an earlier run was stopped while writing, or the file "
             "is damaged)")
    return records


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return None
    for k, v in record.items():
        if not isinstance(k, str) or not (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))):
            return None
    return record


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of steps up to ``step``: what a run resuming from that step has already logged."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        atomic_write_text(path, "".join(_line(r) for r in kept))


def _line(record: dict) -> str:
    # NaN and inf are not JSON: a diverging step logs null
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                       for k, v in record.items()}) + "\n"


class MetricsLog:
    """Appends records to a metrics file, each flushed as it is written."""

    def __init__(self, path: Path):
        self.path = path
        self.file: TextIO | None = open(path, "a", encoding="utf-8")

    def append(self, step: int, record: dict) -> None:
        if self.file is not None:
            self.file.write(_line({"step": step, **record}))
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
