"""``mip360 compare RUN1 RUN2 ...``: runs side by side, when their scores were made the same way.

One table (mean PSNR, SSIM and LPIPS, steps, training time, rays/s, model size) from each run's
``eval/metrics.json``, ``metrics.jsonl`` and config, and for the held-out views where the runs differ
most an image strip: photo | each run's render | each run's error (from the panels ``mip360 eval``
wrote). Runs scored under different protocols (images, 8-bit or float, held-out views, ratio, LPIPS
backbone) are refused, or with ``mixed`` set side by side with the differences flagged.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import load_config
from ..core.errors import UserError
from ..core.files import MIB, atomic_write_text, files_below, read_json_bounded, refuse_foreign
from ..core.progress import format_duration
from ..data.images import read_image
from ..model.model import parameter_count
from ..runs.folder import RunFolder
from ..runs.metrics_log import read_metrics
from ..runs.writers import write_png
from .report import SAME, read_report

COLUMNS = ("run", "views", "PSNR", "SSIM", "LPIPS", "steps", "training time", "rays/s", "parameters")
MANIFEST = "compare.json"


@dataclass
class RunScores:
    """What ``compare`` shows of one run."""

    path: Path
    report: dict
    rays_per_s: float | None
    parameters: int | None

    def row(self) -> dict:
        m, p = self.report["mean"], self.report["protocol"]
        seconds = p.get("train_seconds")
        return {"run": str(self.path), "views": len(self.report["per_image"]), "PSNR": m["psnr"], "SSIM": m["ssim"],
                "LPIPS": m.get("lpips"), "steps": p.get("steps_trained"),
                "training time": seconds, "rays/s": self.rays_per_s, "parameters": self.parameters}


def load_scores(run: Path) -> RunScores:
    """A run's scores (checked), its median logged rays/s and its model's size."""
    folder = RunFolder(run)
    if not folder.config.is_file():
        raise UserError(f"{run} is not a mip360 run (no config.yaml)", hint="give run folders made by mip360 train")
    report = read_report(run)
    rates = [r["rays_per_s"] for r in read_metrics(folder.metrics, warn_broken=False)
             if isinstance(r.get("rays_per_s"), (int, float)) and r["rays_per_s"] > 0]
    try:
        parameters = parameter_count(load_config(folder.config, outside_base="error").model)
    except UserError:
        parameters = None
    return RunScores(run, report, statistics.median(rates[1:] or rates) if rates else None, parameters)


def protocol_differences(runs: list[RunScores]) -> list[str]:
    """The parts of the scoring protocol in which the runs differ (empty when they were scored alike)."""
    diffs = []
    for key in SAME:
        values = [json.dumps(r.report["protocol"].get(key), sort_keys=True) for r in runs]
        if key == "lpips_net":  # a run without LPIPS sits beside others: its column is empty
            values = [v for v in values if v != "null"]
        if len(set(values)) > 1:
            diffs.append(key)
    return diffs


def compare(runs: list[Path], out: Path | None, views: int = 3, mixed: bool = False) -> tuple[list[dict], list[str],
                                                                                               list[Path]]:
    """The table's rows, the protocol differences (refused unless ``mixed``), and the strips written to ``out``
    (the ``views`` held-out views where the runs' PSNR differ most)."""
    if len(runs) < 2:
        raise UserError("compare needs at least two runs", hint="mip360 compare runs/a runs/b")
    if len({r.resolve() for r in runs}) != len(runs):
        raise UserError("a run is given twice")
    scores = [load_scores(r) for r in runs]
    diffs = protocol_differences(scores)
    if diffs and not mixed:
        raise UserError(f"the runs were scored differently ({', '.join(diffs)}): their numbers do not stand side "
                        "by side", hint="score them the same way (mip360 eval RUN with the same options), or add "
                                        "--mixed to show them anyway, flagged")
    strips = _strips(scores, out, views) if out is not None and views > 0 else []
    return [s.row() for s in scores], diffs, strips


def _strips(scores: list[RunScores], out: Path, k: int) -> list[Path]:
    """photo | each run's render | each run's error, for the ``k`` views whose PSNR differ most."""
    per_run = [{r["name"]: r["psnr"] for r in s.report["per_image"]} for s in scores]
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    spread = sorted(common, key=lambda n: -(max(p[n] for p in per_run) - min(p[n] for p in per_run)))[:k]
    _check_out(out)
    written = []
    for name in spread:
        panels = []
        for s in scores:
            path = RunFolder(s.path).eval / "images" / f"{Path(name).stem}.png"
            if not path.is_file():
                raise UserError(f"{path} is missing (the panels mip360 eval writes)", hint=f"mip360 eval {s.path}")
            panel = read_image(path)
            w = panel.shape[1] // 3
            panels.append((panel[:, :w], panel[:, w:2 * w], panel[:, 2 * w:3 * w]))
        shapes = {p[1].shape for p in panels}
        if len(shapes) != 1:
            raise UserError(f"the runs rendered view {name} at different sizes ({sorted(shapes)})",
                            hint="score them at the same --ratio")
        strip = np.concatenate([panels[0][0], *(p[1] for p in panels), *(p[2] for p in panels)], axis=1)
        written.append(out / f"{Path(name).stem}.png")
        write_png(written[-1], strip)
    atomic_write_text(out / MANIFEST, json.dumps({"runs": [str(s.path) for s in scores],
                                                  "strips": [p.name for p in written]}, indent=1) + "\n")
    return written


def _check_out(out: Path) -> None:
    """The strips' folder holds nothing but an earlier compare's strips (its compare.json names them)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not out.is_dir():
        return
    manifest = out / MANIFEST
    try:
        listed = read_json_bounded(manifest, "compare's record", MIB).get("strips", []) if manifest.exists() else []
        known = {str(n) for n in listed} | {MANIFEST} if manifest.exists() else set()
    except (UserError, AttributeError, TypeError):
        known = set()
    refuse_foreign(out, [f for f in files_below(out) if str(f) not in known], "the strips of compare go into a new "
                   "folder or one of an earlier compare", hint="choose another --out")


def table_text(rows: list[dict], fmt: str) -> str:
    """The rows as CSV or a Markdown table."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    cells = [[cell(c, r[c]) for c in COLUMNS] for r in rows]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


def cell(column: str, value) -> str:
    """A value as the table shows it."""
    if value is None:
        return "-"
    if column == "PSNR":
        return f"{value:.2f}"
    if column in ("SSIM", "LPIPS"):
        return f"{value:.4f}"
    if column == "training time":
        return format_duration(value)
    if column in ("rays/s", "parameters", "steps"):
        return f"{value:,.0f}"
    return str(value)
