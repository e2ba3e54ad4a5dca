"""What mip360 writes and reads back, tried as a hostile or unlucky user would (issue 17).

mip360 never deletes or overwrites a file it did not write; every file it reads (its own caches,
checkpoints and run files too) is bounded and checked; command-line values are range-checked
before work starts. Each case ends in one clear message and a non-zero exit, or the right result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import TRAIN_FAST, run_cli
from mip360cli.core.files import process_lock

run = run_cli


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- never delete what it did not write


def test_render_into_a_folder_of_the_users_files_deletes_nothing(trained_example, tmp_path, capsys):
    out = tmp_path / "holiday"
    (out / "rgb").mkdir(parents=True)
    (out / "holiday.mp4").write_bytes(b"the user's video")
    (out / "rgb" / "family.png").write_bytes(b"the user's photo")
    before = _snapshot(out)
    for extra in ([], ["--overwrite"]):
        code, _, err = run(["render", trained_example["run"], "--frames", "2", "--out", out, "--device", "cpu",
                            *extra], capsys)
        assert code == 1 and "holds 2 file(s) mip360 did not write (holiday.mp4, rgb/family.png)" in err, err
        assert "Traceback" not in err and _snapshot(out) == before


def test_a_render_folder_keeps_only_mips_files_and_cleans_what_a_killed_render_left(trained_example, tmp_path,
                                                                                       capsys):
    out = tmp_path / "r"
    args = ["render", trained_example["run"], "--frames", "2", "--out", out, "--device", "cpu", "--no-video"]
    assert run(args, capsys)[0] == 0
    leftover = out / "rgb" / ".00001.png.k1ll3dxx.partial"  # a write killed halfway
    leftover.write_bytes(b"half a frame")
    (out / "rgb" / "00001.png").unlink()
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert not leftover.exists() and (out / "rgb" / "00001.png").exists()
    (out / "notes.txt").write_text("the user's notes, added later")
    code, _, err = run(args + ["--overwrite"], capsys)
    assert code == 1 and "notes.txt" in err and (out / "notes.txt").exists()


def test_a_render_folder_of_an_earlier_mip360_is_not_cleared_by_guesswork(trained_example, tmp_path, capsys):
    """render.json of an earlier version lists no frame names: its files are left alone."""
    import json

    out = tmp_path / "old"
    (out / "rgb").mkdir(parents=True)
    (out / "render.json").write_text(json.dumps({"views": "x", "frames": 2, "depth": "median"}))
    (out / "rgb" / "00000.png").write_bytes(b"a frame, or the user's photo")
    code, _, err = run(["render", trained_example["run"], "--frames", "2", "--out", out, "--device", "cpu"], capsys)
    assert code == 1 and "rendered by an earlier mip360" in err and (out / "rgb" / "00000.png").exists(), err


def test_two_renders_into_one_folder_the_second_is_refused(trained_example, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["render", trained_example["run"], "--frames", "2", "--out", out, "--device", "cpu", "--no-video"]
    assert run(args, capsys)[0] == 0
    with process_lock(out / ".render.lock", "a render"):  # another render holds the folder
        code, _, err = run(args + ["--overwrite"], capsys)
    assert code == 1 and "another mip360 process is using the render folder" in err and "pid" in err


def test_train_into_a_folder_of_the_users_files_is_refused(scene_copy, tmp_path, capsys):
    root = scene_copy("colmap")
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "draft.tex").write_text("\\section{}")
    before = _snapshot(mine)
    code, _, err = run(["train", root, "--run", mine, *TRAIN_FAST], capsys)
    assert code == 1 and "not a mip360 run folder" in err and "draft.tex" in err, err
    assert _snapshot(mine) == before
    only_config = tmp_path / "other"
    only_config.mkdir()
    (only_config / "config.yaml").write_text("my: own config\n")
    code, _, err = run(["train", root, "--run", only_config, *TRAIN_FAST], capsys)
    assert code == 1 and "config.yaml" in err and (only_config / "config.yaml").read_text() == "my: own config\n"
    # a run of mip360 with the user's notes in it trains (and leaves the notes alone)
    run_dir = tmp_path / "run"
    assert run(["train", root, "--run", run_dir, *TRAIN_FAST], capsys)[0] == 0
    (run_dir / "notes.txt").write_text("lr too high?")
    code, _, err = run(["train", root, "--run", run_dir, *TRAIN_FAST, "train.max_steps=3"], capsys)
    assert code == 0, err
    assert (run_dir / "notes.txt").read_text() == "lr too high?"


def test_export_never_replaces_a_file_it_did_not_write(trained_example, tmp_path, capsys):
    base = ["export", trained_example["run"], "--device", "cpu", "--points", "500"]
    theirs = tmp_path / "scan.ply"
    theirs.write_bytes(b"ply\nformat ascii 1.0\ncomment from a laser scanner\n")
    code, _, err = run(base + ["--out", theirs], capsys)
    assert code == 1 and "scan.ply" in err and theirs.read_bytes().startswith(b"ply\nformat ascii")
    code, _, err = run(base + ["--out", tmp_path], capsys)
    assert code == 1 and "is a folder" in err
    ours = tmp_path / "points.ply"
    assert run(base + ["--out", ours], capsys)[0] == 0
    scratch = tmp_path / ".points.ply.views"
    scratch.mkdir()
    (scratch / "3.npz").write_bytes(b"left by a killed export")
    assert run(base + ["--out", ours], capsys)[0] == 0  # its own PLY is replaced, the leftover removed
    assert not scratch.exists()
    scratch.mkdir()
    (scratch / "keep.txt").write_text("someone's")
    code, _, err = run(base + ["--out", ours], capsys)
    assert code == 1 and "keep.txt" in err and (scratch / "keep.txt").exists()


def test_example_and_preprocess_do_not_write_over_the_users_files(scene_copy, tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "images" / "00000.png").write_bytes(b"the user's photo")
    code, _, err = run(["example", photos], capsys)
    assert code == 1 and "images/00000.png" in err and (photos / "images" / "00000.png").read_bytes() == \
        b"the user's photo"
    again = tmp_path / "again"
    assert run(["example", again, "--size", "16x12", "--images", "4"], capsys)[0] == 0
    assert run(["example", again, "--size", "16x12", "--images", "4"], capsys)[0] == 0  # its own example
    root = scene_copy("colmap")
    table = root / "results.h5"
    table.write_bytes(b"not a cache: the user's data")
    code, _, err = run(["preprocess", root, "--out", table], capsys)
    assert code == 1 and "is not a mip360 ray cache" in err and table.read_bytes() == b"not a cache: the user's data"


def test_the_demo_does_not_write_over_a_folder_of_the_users(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "scene").mkdir(parents=True)
    (out / "scene" / "mine.jpg").write_bytes(b"jpeg")
    code, _, err = run(["demo", out, "--steps", "2", "--frames", "1"], capsys)
    assert code == 1 and "mine.jpg" in err and (out / "scene" / "mine.jpg").read_bytes() == b"jpeg"
    shutil.rmtree(out)


# ----------------------------------------------------------------------------- the ray cache, read back

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mip360cli.config import CacheConfig, DataConfig  # noqa: E402
from mip360cli.core.errors import UserError  # noqa: E402
from mip360cli.data.cache import RayCache, build_cache  # noqa: E402
from mip360cli.data.cache.format import index_checksum  # noqa: E402

FUZZ = settings(max_examples=int(__import__("os").environ.get("MIP360_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine_cache(tmp_path_factory, scenes) -> tuple[Path, dict]:
    """A small cache and everything read from it: buckets, held-out images, cameras."""
    root = tmp_path_factory.mktemp("cache")
    path = build_cache(scenes["colmap"], DataConfig(), CacheConfig(bucket_rays=2048), out=root / "c.h5").path
    return path, _read_all(path)


def _read_all(path: Path) -> dict:
    with RayCache(path) as c:
        return {"buckets": [c.read_bucket(b) for b in range(c.n_buckets)],
                "test": [c.test_image(k) for k in range(len(c.test))],
                "K": c.cameras.K, "c2w": c.cameras.c2w, "names": c.cameras.names, "train": c.train,
                "test_idx": c.test, "options": c.options, "transform": c.transform}


def _same(a: dict, b: dict) -> bool:
    for k in a:
        x, y = a[k], b[k]
        if k == "buckets":
            if len(x) != len(y) or not all(np.array_equal(p, q) for bx, by in zip(x, y) for p, q in zip(bx, by)):
                return False
        elif k == "test":
            if len(x) != len(y) or not all(np.array_equal(p, q) for p, q in zip(x, y)):
                return False
        elif not (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y):
            return False
    return True


def _tamper(path: Path, change, keep_checksum: bool = True) -> None:
    """Edit a cache as a hostile file would, recomputing its index checksum (so that the checks behind
    the checksum are the ones tried) unless ``keep_checksum`` is false."""
    with h5py.File(path, "r+") as f:
        change(f)
        if keep_checksum:
            try:
                f.attrs["index_crc32"] = index_checksum(f)
            except KeyError:
                pass


def _replace(f, name: str, data) -> None:
    del f[name]
    f.create_dataset(name, data=data)


@pytest.mark.parametrize("what, change, needle", [
    ("bucket offsets all 0", lambda f: _replace(f, "rays/bucket_offsets", np.zeros_like(f["rays/bucket_offsets"])),
     "bucket offsets are not in order"),
    ("a missing attribute", lambda f: f.attrs.__delitem__("n_buckets"), "is damaged"),
    ("a missing dataset", lambda f: f.__delitem__("rays/bucket_first_id"), "is damaged"),
    ("options that are not JSON", lambda f: f.attrs.__setitem__("options", "{not json"), "is damaged"),
    ("a wrong bucket count", lambda f: f.attrs.__setitem__("n_buckets", int(f.attrs["n_buckets"]) - 1),
     "bucket offsets are not in order"),
    ("a split naming camera 500 of 16", lambda f: _replace(f, "split/test", np.array([0, 500])),
     "split names cameras outside the 16"),
    ("a NaN pose", lambda f: f["cameras/c2w"].__setitem__((3, 0, 3), np.nan), "has NaN or inf"),
    ("a ray id gap table out of range", lambda f: (_replace(f, "rays/overflow_row", np.array([10**9])),
                                                   _replace(f, "rays/overflow_gap", np.array([5]))), "out of order"),
])
def test_a_damaged_cache_is_one_message_naming_it_and_the_fix(pristine_cache, tmp_path, capsys, what, change,
                                                              needle):
    path = tmp_path / "c.h5"
    shutil.copy(pristine_cache[0], path)
    _tamper(path, change)
    with pytest.raises(UserError, match=needle) as e:
        _read_all(path)
    assert "preprocess DATA --force" in str(e.value), what
    code, _, err = run(["train", path, "--run", tmp_path / "run", *TRAIN_FAST], capsys)
    assert code == 1 and str(path) in err and "Traceback" not in err and "internal error" not in err, err


def test_bytes_flipped_in_a_cache_stop_training_instead_of_feeding_it_garbage(pristine_cache, tmp_path, capsys):
    """The issue's case: 256 bytes flipped at 80% of the file (inside the colours of the rays)."""
    path = tmp_path / "c.h5"
    shutil.copy(pristine_cache[0], path)
    with h5py.File(path) as f:  # where the colours are: the flip must land in data the cache holds
        rgb = f["rays/rgb"].id.get_chunk_info(0)
    at = int(0.8 * path.stat().st_size)
    assert rgb.byte_offset <= at and at + 256 <= rgb.byte_offset + rgb.size
    data = bytearray(path.read_bytes())
    data[at:at + 256] = bytes(255 - x for x in data[at:at + 256])
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"is damaged: bucket \d+ of 6 does not match its checksum"):
        _read_all(path)
    code, _, err = run(["train", path, "--run", tmp_path / "run", "--config", "tiny", "train.max_steps=4",
                        "train.batch_rays=4096", "train.val_every=0"], capsys)
    assert code == 1 and "does not match its checksum" in err and "preprocess DATA --force" in err, err


def test_a_cache_without_checksums_is_read_with_a_warning(pristine_cache, tmp_path, capsys):
    path = tmp_path / "c.h5"
    shutil.copy(pristine_cache[0], path)
    with h5py.File(path, "r+") as f:  # as version 2 wrote it
        f.attrs["version"] = 2
        del f.attrs["index_crc32"], f["rays/bucket_crc32"]
    assert _same(_read_all(path), pristine_cache[1])
    assert "without checksums" in capsys.readouterr().err


@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8))
@FUZZ
def test_any_damage_to_a_cache_is_an_error_or_changes_nothing(pristine_cache, tmp_path, flips):
    """Random bytes of the file flipped: reading it all either fails with a clear message or gives exactly
    what the undamaged cache gives (the flip hit unused space). Never other rays."""
    path = tmp_path / "fuzzed.h5"
    data = bytearray(pristine_cache[0].read_bytes())
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    path.write_bytes(bytes(data))
    try:
        got = _read_all(path)
    except UserError:
        return
    assert _same(got, pristine_cache[1])


# ----------------------------------------------------------------------------- command-line values


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A run of a few steps: for the commands' checks, not for its images."""
    from mip360cli.config import load_config
    from mip360cli.data.example import make_example
    from mip360cli.train.loop import train

    root = tmp_path_factory.mktemp("small")
    make_example(root / "scene", "colmap", 10, 24, 16)
    cache = build_cache(root / "scene", DataConfig(), CacheConfig(bucket_rays=1024), out=root / "c.h5").path
    train(cache, root / "run", load_config("tiny", ["train.max_steps=3", "train.val_every=0", "train.batch_rays=64"]))
    return root / "run"


BIG_PATH = {"width": 100000, "height": 100000, "fov_deg": 50, "frames": [{"c2w": np.eye(4).tolist()}]}


@pytest.mark.parametrize("argv, needle", [
    (["train", "{scene}", "--run", "{tmp}/r", "train.adam_beta1=5"], "adam_beta1 and adam_beta2 must be in [0, 1)"),
    (["train", "{scene}", "--run", "{tmp}/r", "train.adam_eps=-1"], "train.adam_eps must be > 0"),
    (["train", "{scene}", "--run", "{tmp}/r", "model.nerf.width=1e9"], "parameters) needs about"),
    (["train", "{scene}", "--run", "{tmp}/r", "train.batch_rays=16777216", "--config", "default"], "needs about"),
    (["train", "{scene}", "--run", "{tmp}/r", "--gpus", "999"], "--gpus 999: this machine has"),
    (["render", "{run}", "--gpus", "999"], "--gpus 999: this machine has"),
    (["render", "{run}", "--frames", "1000000"], "--frames must be from 1 to 100000"),
    (["render", "{run}", "--path", "{tmp}/big.json"], "the image size must be from 1x1 to 16384x16384"),
    (["render", "{run}", "--ratio", "nan"], "--ratio nan"),
    (["preprocess", "{scene}", "--out", "/proc/x.h5"], "/proc"),
    (["export", "{run}", "--neighbours", "-1"], "--neighbours must be from 1 to 64"),
    (["export", "{run}", "--points", "0"], "--points must be >= 1"),
    (["demo", "{tmp}/d", "--frames", "0"], "--frames must be from 1 to 10000"),
    (["demo", "{tmp}/d", "--steps", "0"], "--steps must be >= 1"),
    (["view", "{run}", "--port", "70000"], "--port 70000: a port is a number from 1 to 65535"),
    (["view", "{run}", "--port", "-1"], "--port -1"),
    (["view", "{run}", "--host", "256.1.1.1"], "--host '256.1.1.1' is not an address"),
    (["view", "{run}", "--max-res", "100000"], "--max-res from 16 to 16384"),
    (["train", "{scene}", "--run", "{tmp}/r", "--viewer", "--viewer-port", "0"], "--viewer-port 0"),
    (["example", "{tmp}/e", "--size", "100000x100000"], "each side must be from 4 to 8192"),
    (["example", "{tmp}/e", "--distortion", "inf"], "--distortion must be a radial k1"),
])
def test_values_out_of_range_are_refused_before_work_starts(scene_copy, small_run, tmp_path, capsys, argv, needle):
    import json

    (tmp_path / "big.json").write_text(json.dumps(BIG_PATH))
    values = {"scene": scene_copy("colmap"), "run": small_run, "tmp": tmp_path}
    code, _, err = run([a.format(**values) for a in argv], capsys)
    assert code == 1 and needle in err, err
    assert "internal error" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_ctrl_c_in_the_demo_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from mip360cli.core.errors import Interrupted
    from mip360cli.train import loop

    def stop(self, sig, bar):  # the SIGINT flag seen after the first step
        raise Interrupted("interrupted at step 1: checkpoint saved; run the same command to resume", 2, 1)

    monkeypatch.setattr(loop.Trainer, "_after_step", stop)
    code, _, err = run(["demo", tmp_path / "d", "--steps", "5", "--frames", "1"], capsys)
    assert code == 130 and "interrupted at step 1" in err and "internal error" not in err, err


@given(frames=st.integers(-3, 3), fps=st.one_of(st.floats(-1e3, 1e4), st.just(float("nan"))), ratio=st.sampled_from(
    ["0", "-1", "0.5", "1e309", "nan", "5", "0.25"]), depth=st.sampled_from(["none", "mean", "median", "mode", ""]),
    chunk=st.sampled_from(["auto", "0", "-5", "7", "1e20", "x"]))
@FUZZ
def test_render_values_are_a_result_or_one_message(small_run, tmp_path, capsys, frames, fps, ratio, depth, chunk):
    out = tmp_path / "fuzz"
    if out.exists():
        shutil.rmtree(out)
    code, _, err = run(["render", small_run, "--frames", frames, "--fps", fps, "--ratio", ratio, "--depth", depth,
                        f"render.chunk_rays={chunk}", "--out", out, "--no-video", "--device", "cpu"], capsys)
    assert code in (0, 1, 2) and "internal error" not in err and "Traceback" not in err, err
    if code == 0:
        assert len(list((out / "rgb").glob("*.png"))) == frames


# ----------------------------------------------------------------------------- checkpoints and run folders, read back


def _copy_run(run_dir: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(run_dir, dst)
    return dst


CHECKPOINT_DAMAGE = [
    ("a list", lambda s: [s]),
    ("no model", lambda s: {k: v for k, v in s.items() if k != "model"}),
    ("a string step", lambda s: {**s, "step": "12"}),
    ("a bad RNG state", lambda s: {**s, "rng": {"torch": __import__("torch").zeros(3)}}),
    ("NaN weights", lambda s: {**s, "model": {k: v * float("nan") for k, v in s["model"].items()}}),
    ("a wrong shape", lambda s: {**s, "model": {k: v[:1] for k, v in s["model"].items()}}),
    ("a foreign optimizer", lambda s: {**s, "optimizer": {"state": {}, "param_groups": [{"params": [0]}]}}),
]


@pytest.mark.parametrize("what, damage", CHECKPOINT_DAMAGE, ids=[c[0] for c in CHECKPOINT_DAMAGE])
def test_a_damaged_checkpoint_is_one_message_for_render_eval_and_resume(small_run, tmp_path, capsys, what, damage):
    import torch

    from mip360cli.runs import checkpoints as ckpt

    run_dir = _copy_run(small_run, tmp_path / "run")
    step, last = ckpt.list_checkpoints(run_dir)[-1]
    state = torch.load(last, weights_only=True)
    torch.save(damage(state), last)
    for argv in (["eval", run_dir, "--device", "cpu"],
                 ["train", small_run.parent / "c.h5", "--run", run_dir, "--config", "tiny", "train.max_steps=5",
                  "train.batch_rays=64", "train.val_every=0"]):
        code, _, err = run(argv, capsys)
        if what == "a foreign optimizer" and argv[0] == "eval":
            assert code == 0, err  # it renders: only resuming needs its optimizer
            continue
        assert code == 1 and str(last.name) in err and "internal error" not in err, (what, argv[0], err)


@pytest.mark.parametrize("target", ["config.yaml", "cameras.json", "metrics.jsonl", "checkpoints/step_0000003.pt",
                                    "cache"])
@pytest.mark.parametrize("kind", ["dev/zero", "folder", "fifo"])
def test_a_device_folder_or_fifo_in_place_of_a_file_is_one_message(small_run, tmp_path, capsys, target, kind):
    """/dev/zero (a link in someone's dataset), a folder or a FIFO where mip360 expects a file: never read
    until memory runs out, never waited on forever, never an internal error."""
    import os

    run_dir = _copy_run(small_run, tmp_path / "run")
    cache = tmp_path / "c.h5"
    shutil.copy(small_run.parent / "c.h5", cache)
    path = cache if target == "cache" else run_dir / target
    path.unlink()
    if kind == "dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    argv = (["train", cache, "--run", run_dir, "--config", "tiny", "train.max_steps=4", "train.batch_rays=64"]
            if target in ("cache", "metrics.jsonl") else ["eval", run_dir, "--device", "cpu"])
    code, _, err = run(argv, capsys)
    assert code == 1 and "internal error" not in err and "Traceback" not in err, err
    assert path.name in err or str(path) in err, err


@given(data=st.data())
@FUZZ
def test_damaged_run_files_are_a_result_or_one_message(small_run, tmp_path, capsys, data):
    """cameras.json, config.yaml and metrics.jsonl of a run, each cut short, bytes flipped or values
    swapped: opening the run (and reading its metrics) is a result or one UserError."""
    import json

    import yaml

    from mip360cli.runs.load import load_run
    from mip360cli.runs.metrics_log import read_metrics

    run_dir = _copy_run(small_run, tmp_path / "run")
    name = data.draw(st.sampled_from(["cameras.json", "config.yaml", "metrics.jsonl"]))
    path = run_dir / name
    raw = path.read_bytes()
    how = data.draw(st.sampled_from(["cut", "flip", "value"]))
    if how == "cut":
        path.write_bytes(raw[:data.draw(st.integers(0, len(raw)))])
    elif how == "flip":
        b = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 6))):
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(b))
    elif name != "metrics.jsonl":
        tree = json.loads(raw) if name.endswith(".json") else yaml.safe_load(raw)
        node, keys = tree, []
        while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
            keys.append(key)
            node = node[key]
        value = data.draw(st.sampled_from([None, -1, 0, 1e308, "x", [], {}, [[1, 2]], True, float("nan")]))
        if keys:
            parent = tree
            for k in keys[:-1]:
                parent = parent[k]
            parent[keys[-1]] = value
        else:
            tree = value
        path.write_text(json.dumps(tree) if name.endswith(".json") else yaml.safe_dump(tree))
    try:
        loaded = load_run(run_dir, device="cpu")
        read_metrics(run_dir / "metrics.jsonl")
    except UserError:
        return
    assert len(loaded.cameras) == 10 and len(loaded.train) + len(loaded.test) == 10


# ----------------------------------------------------------------------------- dataset files


DATASET_FILES = [("colmap", "sparse/0/cameras.bin"), ("colmap", "sparse/0/images.bin"), ("llff", "poses_bounds.npy"),
                 ("transforms", "transforms.json"), ("easymocap", "intri.yml"), ("easymocap", "extri.yml"),
                 ("colmap", "images/003.png")]


@pytest.mark.parametrize("fmt, name", DATASET_FILES)
@pytest.mark.parametrize("kind", ["dev/zero", "folder", "fifo"])
def test_a_dataset_file_that_is_a_device_folder_or_fifo_is_one_message(scene_copy, capsys, fmt, name, kind):
    import os

    root = scene_copy(fmt)
    path = root / name
    path.unlink()
    if kind == "dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    code, _, err = run(["preprocess", root, "--format", fmt], capsys)
    if name.endswith(".png"):  # a frame without a (regular) image file: skipped, and said so
        assert code == 0 and "have no image file" in err and path.name in err, err
        return
    assert code == 1 and "internal error" not in err and "Traceback" not in err, err
    assert path.name in err, err


@pytest.mark.parametrize("argv, needle", [
    (["preprocess", "{scene}", "--config", "/dev/zero"], "is not a regular file"),
    (["render", "{run}", "--path", "{tmp}/zero.json"], "a link to /dev/zero"),
])
def test_a_config_or_camera_path_that_is_a_device_is_one_message(scene_copy, small_run, tmp_path, capsys, argv,
                                                                   needle):
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    values = {"scene": scene_copy("colmap"), "run": small_run, "tmp": tmp_path}
    code, _, err = run([a.format(**values) for a in argv], capsys)
    assert code == 1 and needle in err and "internal error" not in err, err


def _edit_images_txt(root: Path, edit) -> None:
    from mip360cli.data.example import make_example

    make_example(root, "colmap", 8, 16, 12, colmap_binary=False)
    path = root / "sparse" / "0" / "images.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _image_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line and not line.startswith("#") and len(line.split()) == 10]


def test_pose_values_that_do_not_survive_normalization_are_refused(tmp_path, capsys):
    def quaternion(lines):
        i = _image_lines(lines)[2]
        f = lines[i].split()
        lines[i] = " ".join([f[0], "1e300", "1e300", "0", "0", *f[5:]])
        return lines

    def translation(lines):
        i = _image_lines(lines)[2]
        f = lines[i].split()
        lines[i] = " ".join([*f[:5], "1e200", f[6], f[7], *f[8:]])
        return lines

    def no_name(lines):
        i = _image_lines(lines)[3]
        lines[i] = " ".join(lines[i].split()[:9])
        return lines

    for what, edit, needle in [("quaternion", quaternion, "cannot be normalized"),
                               ("translation", translation, "camera positions cannot be normalized"),
                               ("no name", no_name, "every image line needs its image's file NAME")]:
        root = tmp_path / what.replace(" ", "_")
        _edit_images_txt(root, edit)
        code, _, err = run(["preprocess", root], capsys)
        assert code == 1 and needle in err and "images.txt" in err, (what, err)


@pytest.mark.parametrize("angle, needle", [(0, "between 0 and pi"), (3.141592653589793, "between 0 and pi"),
                                           (-1, "between 0 and pi"), ("wide", "must be a finite number")])
def test_a_field_of_view_outside_0_to_180_degrees_is_refused(scene_copy, capsys, angle, needle):
    import json

    root = scene_copy("transforms")
    meta = json.loads((root / "transforms.json").read_text())
    for key in ("fl_x", "fl_y"):
        meta.pop(key, None)
        for fr in meta["frames"]:
            fr.pop(key, None)
    meta["camera_angle_x"] = angle
    (root / "transforms.json").write_text(json.dumps(meta))
    code, _, err = run(["preprocess", root], capsys)
    assert code == 1 and needle in err and "camera_angle_x" in err, err


def test_json_nested_beyond_any_real_file_is_one_message(scene_copy, small_run, tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    root = scene_copy("transforms")
    (root / "transforms.json").write_text(deep)
    code, _, err = run(["preprocess", root], capsys)
    assert code == 1 and "nested too deeply" in err, err
    run_dir = _copy_run(small_run, tmp_path / "run")
    (run_dir / "cameras.json").write_text(deep)
    (tmp_path / "path.json").write_text(deep)
    for argv in (["eval", run_dir, "--device", "cpu"], ["render", small_run, "--path", tmp_path / "path.json"]):
        code, _, err = run(argv, capsys)
        assert code == 1 and "nested too deeply" in err, err


@given(data=st.data())
@settings(parent=FUZZ, max_examples=max(1, FUZZ.max_examples // 3))  # each example trains (a resume)
def test_damaged_checkpoints_are_a_result_or_one_message(small_run, tmp_path, capsys, data):
    """A checkpoint's fields dropped, swapped for other types, its tensors cut, reshaped or retyped:
    rendering (load_run) and resuming (the trainer's checks) give a result or one UserError."""
    import torch

    from mip360cli.runs import checkpoints as ckpt
    from mip360cli.runs.load import load_run

    run_dir = _copy_run(small_run, tmp_path / "run")
    step, last = ckpt.list_checkpoints(run_dir)[-1]
    state = torch.load(last, weights_only=True)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(state)))
        what = data.draw(st.sampled_from(["drop", "value", "tensor"]))
        if what == "drop":
            state.pop(key)
        elif what == "value":
            state[key] = data.draw(st.sampled_from([None, -1, 2**70, "x", [], {}, 1.5, True, torch.zeros(2)]))
        elif isinstance(state[key], dict) and state[key]:
            inner = data.draw(st.sampled_from(sorted(state[key], key=str)))
            v = state[key][inner]
            if isinstance(v, torch.Tensor) and v.numel():
                state[key][inner] = data.draw(st.sampled_from([v[:1], v.reshape(-1), v.double(), v.int(),
                                                               torch.full_like(v, float("inf")) if
                                                               v.is_floating_point() else v[:0]]))
            else:
                state[key][inner] = None
        if not state:
            break
    torch.save(state, last)
    try:
        assert load_run(run_dir, device="cpu").step >= 0
    except UserError:
        pass
    code, _, err = run(["train", small_run.parent / "c.h5", "--run", run_dir, "--config", "tiny",
                        "train.max_steps=4", "train.batch_rays=64", "train.val_every=0"], capsys)
    assert code in (0, 1) and "internal error" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("what, edit", [
    ("no cameras", lambda m: m.pop("cameras")),
    ("an empty list", lambda m: m.__setitem__("cameras", [])),
    ("a string K", lambda m: m["cameras"][0].__setitem__("K", "fx fy cx cy")),
    ("a split naming camera 500", lambda m: m.__setitem__("test", [500])),
])
def test_a_damaged_cameras_json_is_one_message(small_run, tmp_path, capsys, what, edit):
    import json

    run_dir = _copy_run(small_run, tmp_path / "run")
    meta = json.loads((run_dir / "cameras.json").read_text())
    edit(meta)
    (run_dir / "cameras.json").write_text(json.dumps(meta))
    code, _, err = run(["eval", run_dir, "--device", "cpu"], capsys)
    assert code == 1 and "cameras.json" in err and "internal error" not in err, (what, err)


def test_upgrade_converts_only_what_still_is_a_checkpoint(tmp_path, capsys):
    """A trusted pickle that converts to plain data but is no mip360 checkpoint is refused, not written."""
    import torch

    path = tmp_path / "other.pt"
    torch.save({"weights": np.zeros(3), "epoch": np.int64(4), "when": Path("/x")}, path)  # another tool's
    before = path.read_bytes()
    code, _, err = run(["checkpoint", "upgrade", path, "--trust"], capsys)
    assert code == 1 and "not one mip360 wrote" in err and "'model'" in err, err
    assert path.read_bytes() == before


def test_a_full_disk_under_example_or_export_is_one_message(trained_example, tmp_path, capsys, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", full)
        code, _, err = run(["example", tmp_path / "e", "--size", "16x12", "--images", "4"], capsys)
    assert code == 1 and "disk is full" in err and "internal error" not in err, err
    with monkeypatch.context() as m:
        m.setattr(np, "savez", full)
        out = tmp_path / "p.ply"
        code, _, err = run(["export", trained_example["run"], "--out", out, "--device", "cpu"], capsys)
    assert code == 1 and "disk is full" in err and not out.exists(), err
    assert not (tmp_path / ".p.ply.views").exists()  # the scratch folder is removed


def test_the_temp_files_of_a_render_killed_while_writing_videos_are_removed(trained_example, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["render", trained_example["run"], "--frames", "2", "--out", out, "--device", "cpu"]
    assert run(args, capsys)[0] == 0
    left = [out / ".rgb_depth.mp4.k1ll3dxx.partial.mp4", out / "depth" / ".00000.png.abcdefgh.partial"]
    for p in left:
        p.write_bytes(b"half")
    assert run(args, capsys)[0] == 0
    assert not any(p.exists() for p in left)
