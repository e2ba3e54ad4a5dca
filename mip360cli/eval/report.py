"""``RUN/eval/metrics.json``: the scores of a run and the record of how they were made.

One writer (:func:`write_report`) and one reader (:func:`read_report`, every field checked: the file
may come from anyone), used by ``mip360 eval`` and ``mip360 compare``. The record (``protocol``)
says what the published tables' numbers depend on: where the images came from, 8-bit or float
scoring, the split and its held-out names, the SSIM window, the LPIPS backbone, the checkpoint and
the training time, and whether all of it is the Mip-NeRF 360 protocol (:func:`comparable`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..core.errors import UserError
from ..core.files import MIB, atomic_write_text, read_json_bounded
from ..core.progress import format_duration

SSIM = "11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03, 'valid', per channel, mean"
PROTOCOL = ("the Mip-NeRF 360 protocol: the shipped images_4 (outdoor) or images_2 (indoor) read as they are, "
            "every 8th image in name order held out, renders rounded to 8 bits, SSIM with an 11x11 Gaussian "
            "window, LPIPS with AlexNet (v0.1)")
# What must be equal for two runs' scores to stand side by side (mip360 compare).
SAME = ("images", "quantize", "held_out", "ratio", "ssim", "lpips_net")


def comparable(protocol: dict) -> str:
    """``yes`` or ``no: <why>``: whether scores made this way compare with the published tables."""
    why = []
    images = protocol.get("images") or {}
    if images.get("source") != "shipped":
        why.append("the ground truth was " + (f"resized from {images.get('read')} with {images.get('filter')}"
                                              if images.get("source") == "resized" else "of unknown source")
                   + " instead of read from the shipped images_N")
    elif not any(f"images_{n}" in images.get("folders", []) for n in (2, 4)):
        why.append(f"the images are {', '.join(images.get('folders', [])) or '?'}, not the shipped images_4 or "
                   "images_2 the tables use")
    if not protocol.get("quantize"):
        why.append("float renders scored (eval.quantize=false), not 8-bit ones")
    split = protocol.get("split") or {}
    if split.get("name") != "test" or split.get("test_every") != 8 or split.get("frame_interval") != 1:
        why.append(f"another split ({split.get('name')}, test_every={split.get('test_every')}, "
                   f"frame_interval={split.get('frame_interval')}), not every 8th image held out")
    if protocol.get("lpips_net") not in (None, "alex"):
        why.append(f"LPIPS with {protocol.get('lpips_net')}, not AlexNet")
    return "yes" if not why else "no: " + "; ".join(why)


def write_report(out: Path, result: dict) -> None:
    """metrics.json and per_image.csv in ``out``, atomically."""
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    buf = io.StringIO()
    fields = ["name", "psnr", "ssim"] + (["lpips"] if result["mean"].get("lpips") is not None else []) + (
        ["masked"] if any("masked" in r for r in result["per_image"]) else [])
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(result["per_image"])
    atomic_write_text(out / "per_image.csv", buf.getvalue())


def read_report(run: Path) -> dict:
    """The scores of ``RUN/eval/metrics.json``, checked; one UserError naming the file and the field."""
    path = run / "eval" / "metrics.json"
    if not path.exists():
        raise UserError(f"{run} has no scores ({path})", hint=f"score it first: mip360 eval {run}")
    data = read_json_bounded(path, "scores", 64 * MIB)

    def bad(what: str) -> UserError:
        return UserError(f"{path}: {what}", hint=f"score the run again: mip360 eval {run}")

    if not isinstance(data, dict) or not isinstance(data.get("mean"), dict) or not isinstance(
            data.get("per_image"), list):
        raise bad("expected an object with 'mean' and 'per_image'")
    for key in ("psnr", "ssim", "lpips"):
        if key in data["mean"] and not _number_or_none(data["mean"][key]):
            raise bad(f"mean {key} must be a number, got {data['mean'][key]!r}")
    if not _number_or_none(data["mean"].get("psnr")) or data["mean"].get("psnr") is None:
        raise bad("it has no mean PSNR")
    for i, row in enumerate(data["per_image"]):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not all(
                _number_or_none(row.get(k)) for k in ("psnr", "ssim", "lpips")):
            raise bad(f"per_image[{i}] must hold a name and numbers")
    if not isinstance(data.get("protocol"), dict):
        raise bad("it has no record of how the scores were made (scored by an earlier mip360)")
    return data


def _number_or_none(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and
                             (math.isfinite(value) or value == math.inf))


def protocol_lines(result: dict) -> list[str]:
    """The record printed under the table."""
    p = result["protocol"]
    images = p["images"]
    source = {"shipped": f"read as they are from {', '.join(images.get('folders', []))}",
              "resized": f"resized from {images.get('read')} to {images.get('used')} with {images.get('filter')}",
              }.get(images.get("source"), "not recorded (a cache of an earlier mip360)")
    seconds = p.get("train_seconds")
    trained = f"{p['steps_trained']:,} steps" + (f", {format_duration(seconds)} of training" if seconds else "")
    return [
        f"images     {source}",
        f"scoring    {'8-bit renders' if p['quantize'] else 'float renders'}; SSIM {p['ssim']}",
        f"LPIPS      {p['lpips']}",
        f"split      {p['split']['name']}: {len(p['held_out'])} views (test_every={p['split']['test_every']}, "
        f"frame_interval={p['split']['frame_interval']}); ratio {p['ratio']}",
        f"trained    {trained} (checkpoint of step {p['checkpoint_step']:,})",
        f"comparable with the Mip-NeRF 360 protocol: {p['comparable']}",
    ]
